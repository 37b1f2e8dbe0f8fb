import type { Logger } from "pino";
import type { Config } from "../config.js";
import { asHypervisorError, HypervisorError } from "../errors.js";
import type { Generation, GenerationStore } from "../generations/generation-store.js";
import type { Metrics } from "../metrics/metrics.js";
import type { ContainerRuntime, HealthProbe, SandboxInfo } from "../runtime/container-runtime.js";
import { ROLES, type Endpoint, type Role, type Slot, type Target, type TargetSource } from "../../proxy/target.js";
import type { RouteController } from "../routing/route-controller.js";
import { logText } from "../runtime/log-lines.js";
import { httpHealthProbe, waitHealthy } from "./health-check.js";

interface Running extends Target {
  lastActivity: number;
  openSockets: number;
}

export interface SandboxStatus {
  user: string;
  role: Role;
  slot: Slot;
  generation: number;
  /** `not started`: the slot has no sandbox yet (never started, or its generation changed since). */
  state: "running" | "starting" | "stopped" | "not started";
  /** One probe of a running sandbox; null when it does not run. */
  health: "healthy" | "unhealthy" | null;
  endpoint: Endpoint | null;
  startedAt: string | null;
}

export interface LogRequest {
  /** The last this many lines (default 100, at most MAX_LOG_TAIL). */
  tail?: number;
  /** Keep yielding new lines until the sandbox stops or the signal fires. */
  follow?: boolean;
  signal?: AbortSignal;
}

/** How a start is going, for callers that show it live (a deploy's progress). */
export interface StartProgress {
  user: string;
  slot: Slot;
  phase: "starting" | "waiting for health" | "healthy";
  /** Failed health probes so far. */
  attempts: number;
  elapsedMs: number;
}

/** A progress report at most this often while a start waits for health. */
const PROGRESS_EVERY_MS = 1000;

/** A slot without a sandbox has printed nothing: what to run to change that. */
export function noLogsYet(user: string, role: Role, cause?: unknown): HypervisorError {
  return new HypervisorError(
    "not_found",
    `${user}'s ${role} sandbox has not been started, so it has no logs yet (hypervisorctl sandboxes start ${user} ${role})`,
    { user, role },
    { cause },
  );
}

export const DEFAULT_LOG_TAIL = 100;
export const MAX_LOG_TAIL = 10_000;

export type ManagerConfig = Pick<Config, "startTimeoutMs" | "idleStopMs" | "maxSandboxes" | "sandboxEnv" | "sandboxLimits">;

const STOP_TIMEOUT_MS = 10_000;
/** A move (stop, copy the data, start on the target) fails and backs out rather than run past this. */
const MOVE_DEADLINE_MS = 120_000;
/** How long a sandbox that already runs, but was never seen healthy, gets to answer its health check. */
const RUNNING_HEALTH_GRACE_MS = 2000;
const key = (user: string, slot: Slot) => `${user}/${slot}`;

/**
 * A failed move is told by what it left: the user back where they were. A target host that will
 * not run the sandbox (a port it cannot publish, a start it refuses) is that host's fault, a
 * refusal (409) the operator can act on, not a fault of the hypervisor's own (500).
 */
function backedOut(err: unknown, user: string, from: string, to: string): HypervisorError {
  const e = asHypervisorError(err);
  const code = e.code === "internal" ? "unhealthy_target" : e.code;
  return new HypervisorError(code, `moving ${user} to host ${to} failed and was undone, ${user} stays on ${from}: ${e.message}`, { user, from, to }, { cause: e });
}
const SLOTS: readonly Slot[] = ["a", "b"];

/**
 * Owns sandbox lifecycle: starts on demand (one start shared by concurrent callers), stops
 * idle sandboxes, enforces the capacity limit, and adopts what already runs after a restart.
 * The in-memory `running` map is what makes ensure() cheap on the proxy's hot path. Which slot
 * a role is, and what a slot runs, it reads from the route controller; it never writes routes.
 */
export class SandboxManager implements TargetSource {
  private readonly running = new Map<string, Running>();
  private readonly starting = new Map<string, Promise<Running>>();
  /** Bumped on every start and stop, so adoption never overrides a newer decision. */
  private readonly changes = new Map<string, number>();
  /** Users being moved to another host: their requests wait for the move instead of starting anything. */
  private readonly moving = new Map<string, Promise<void>>();
  private idleTimer: NodeJS.Timeout | undefined;
  private readonly health: HealthProbe;
  private readonly progressListeners = new Set<(p: StartProgress) => void>();

  constructor(
    private readonly runtime: ContainerRuntime,
    private readonly routing: RouteController,
    private readonly generations: GenerationStore,
    private readonly config: ManagerConfig,
    private readonly log: Logger,
    private readonly metrics?: Pick<Metrics, "sandboxStarted">,
  ) {
    this.health = runtime.health ?? httpHealthProbe;
  }

  /**
   * Rebuilds the in-memory view from what the runtime reports, found by label. Sandboxes of
   * users this database does not know are left alone: they may hold another instance's data.
   */
  async adopt(): Promise<{ adopted: number; ignored: number }> {
    const seen = new Map(this.changes);
    const infos = await this.runtime.list();
    let adopted = 0;
    let ignored = 0;
    for (const info of infos) {
      if (!this.routing.hasUser(info.user)) {
        ignored++;
        continue;
      }
      const k = key(info.user, info.slot);
      if (this.changes.get(k) !== seen.get(k)) continue;
      // A crash between assigning a generation and recreating the container leaves the old
      // one running: not adopted, so the next ensure replaces it (its data volume stays).
      if (info.generationId !== this.routing.slot(info.user, info.slot).generationId) continue;
      if (info.running && info.endpoint) {
        this.running.set(key(info.user, info.slot), this.toRunning(info, info.endpoint));
        adopted++;
      }
    }
    this.log.info({ adopted, ignored, runtime: this.runtime.kind }, "sandboxes adopted");
    return { adopted, ignored };
  }

  startIdleSweep(): void {
    if (this.config.idleStopMs <= 0) return;
    const every = Math.min(60_000, Math.max(250, Math.floor(this.config.idleStopMs / 4)));
    this.idleTimer = setInterval(() => void this.stopIdle(), every);
    this.idleTimer.unref();
  }

  close(): void {
    clearInterval(this.idleTimer);
  }

  /**
   * Gives a slot another generation: the old container goes (its data volume stays) and the
   * next ensure creates one from the new generation. Call with the user's lock held.
   */
  async assignGeneration(user: string, slot: Slot, generationId: number): Promise<void> {
    await this.stopSlot(user, slot);
    await this.runtime.remove(user, slot, { removeData: false });
    this.routing.setSlotGeneration(user, slot, generationId);
  }

  isRunning(user: string, slot: Slot): boolean {
    return this.running.has(key(user, slot));
  }

  /** One health probe of a slot's sandbox; false when it is not running. */
  async healthy(user: string, slot: Slot): Promise<boolean> {
    const running = this.running.get(key(user, slot));
    return running ? this.health.probe(running.endpoint) : false;
  }

  /**
   * Ensures the slot's sandbox and checks that it answers now: what a swap or rollback needs of
   * its target. One that already runs but was never seen healthy (a failed deploy) gets a short
   * grace, not a full start timeout.
   */
  async ensureHealthy(user: string, slot: Slot): Promise<void> {
    if (!this.isRunning(user, slot)) {
      const info = await this.runtime.inspect(user, slot);
      if (info?.running && info.endpoint && (await waitHealthy(info.endpoint, Date.now() + RUNNING_HEALTH_GRACE_MS, undefined, this.health)) !== "healthy") {
        throw new HypervisorError("unhealthy_target", `the target sandbox of ${user} is running but fails its health check`, { user, slot });
      }
    }
    try {
      // A health-gated change waits for the runtime's API, even onto a target that runs.
      const refused = this.runtime.unavailableFor?.(user);
      if (refused) throw refused;
      await this.ensureSlot(user, slot);
    } catch (err) {
      const e = asHypervisorError(err);
      throw new HypervisorError("unhealthy_target", `the target sandbox of ${user} is not healthy: ${e.message}`, { user, slot }, { cause: err });
    }
    if (!(await this.healthy(user, slot))) {
      throw new HypervisorError("unhealthy_target", `the target sandbox of ${user} failed its health check`, { user, slot });
    }
  }

  /** The runtime's kind: generations recorded for another runtime cannot run here. */
  get runtimeKind(): ContainerRuntime["kind"] {
    return this.runtime.kind;
  }

  /** The target for (user, role), started on demand and healthy; marks it active. */
  async ensure(user: string, role: Role): Promise<Target> {
    return this.ensureSlot(user, this.routing.slotOf(user, role));
  }

  /** ensure() without a promise for a running target: what the proxy asks first on every request. */
  current(user: string, role: Role): Target | undefined {
    // A move holds the user's requests and a down host refuses them: both take ensure()'s way.
    // A host whose API alone is down still serves what runs there.
    if (this.moving.has(user)) return undefined;
    const running = this.running.get(key(user, this.routing.slotOf(user, role)));
    if (!running || this.runtime.unavailableFor?.(user, true)) return undefined;
    running.lastActivity = Date.now();
    return running;
  }

  async ensureSlot(user: string, slot: Slot): Promise<Target> {
    const moving = this.moving.get(user);
    if (moving) await moving;
    const k = key(user, slot);
    const current = this.running.get(k);
    const refused = this.runtime.unavailableFor?.(user, current !== undefined);
    if (refused) throw refused;
    if (current) {
      current.lastActivity = Date.now();
      return current;
    }
    let pending = this.starting.get(k);
    if (!pending) {
      this.bump(k);
      pending = this.timedStart(user, slot).finally(() => this.starting.delete(k));
      this.starting.set(k, pending);
    }
    return pending;
  }

  async stop(user: string, role: Role): Promise<void> {
    await this.stopSlot(user, this.routing.slotOf(user, role));
  }

  async restart(user: string, role: Role): Promise<Target> {
    const slot = this.routing.slotOf(user, role);
    await this.stopSlot(user, slot);
    return this.ensureSlot(user, slot);
  }

  /**
   * Stops and removes both of the user's sandboxes; their data stays unless `purge`. Call with
   * the user's lock held, before the user's rows go.
   */
  async removeUser(user: string, opts: { purge: boolean }): Promise<void> {
    for (const slot of ["a", "b"] as const) {
      await this.stopSlot(user, slot);
      await this.runtime.remove(user, slot, { removeData: opts.purge });
    }
    // Kept data stays on the host it was on (logged here); the placement goes with the user's rows.
    const host = this.runtime.moves?.hostOf(user);
    this.runtime.moves?.unplace(user);
    this.log.info({ user, purge: opts.purge, host }, "user's sandboxes removed");
  }

  /** Hears how every start goes until the returned function is called. */
  onStartProgress(listener: (p: StartProgress) => void): () => void {
    this.progressListeners.add(listener);
    return () => this.progressListeners.delete(listener);
  }

  /**
   * Moves both slots of a user to another host (DESIGN §8a): with the user's requests held, stop
   * both, copy their data volumes, start on the target what ran before and check it healthy, then
   * switch the placement and remove the old containers and volumes. Any failure removes what was
   * made on the target and starts the user again where they were; their data there is untouched.
   */
  async move(user: string, host: string): Promise<{ from: string | undefined; to: string; durationMs: number }> {
    const moves = this.runtime.moves;
    if (!moves) throw new HypervisorError("conflict", `the ${this.runtime.kind} runtime has one host only; there is nowhere to move ${user}`);
    this.routing.slot(user, "a"); // not_found for an unknown user
    return this.routing.withUserLock(user, async () => {
      const began = Date.now();
      const deadline = began + MOVE_DEADLINE_MS;
      const from = moves.hostOf(user);
      moves.checkTarget(user, host);
      let release!: () => void;
      this.moving.set(
        user,
        new Promise<void>((resolve) => {
          release = resolve;
        }),
      );
      try {
        const wasRunning = SLOTS.filter((slot) => this.running.has(key(user, slot)));
        if (from === undefined) {
          // Never started anywhere: nothing to copy, the next start happens on the target.
          moves.place(user, host);
          return { from, to: host, durationMs: Date.now() - began };
        }
        for (const slot of SLOTS) await this.stopSlot(user, slot);
        const images = Object.fromEntries(SLOTS.map((slot) => [slot, this.generations.require(this.routing.slot(user, slot).generationId).imageId]));
        try {
          await moves.copyData(user, from, host, images);
          moves.place(user, host);
          for (const slot of wasRunning) {
            if (Date.now() > deadline) throw new HypervisorError("deadline_exceeded", `moving ${user} took longer than ${MOVE_DEADLINE_MS} ms`, { user });
            await this.startSlot(user, slot);
          }
        } catch (err) {
          await this.backOut(user, from, host, wasRunning);
          throw backedOut(err, user, from, host);
        }
        await moves.discard(user, from).catch((err: unknown) => this.log.warn({ err, user, host: from }, "moved, but the old sandboxes could not be removed"));
        this.log.info({ user, from, to: host, ms: Date.now() - began }, "user moved");
        return { from, to: host, durationMs: Date.now() - began };
      } finally {
        this.moving.delete(user);
        release();
      }
    });
  }

  private async backOut(user: string, from: string, to: string, wasRunning: Slot[]): Promise<void> {
    const moves = this.runtime.moves!;
    for (const slot of SLOTS) {
      this.bump(key(user, slot));
      this.running.delete(key(user, slot));
    }
    // The copies on the target go; the user's own data never left `from`.
    await moves.discard(user, to).catch((err: unknown) => this.log.warn({ err, user, host: to }, "a failed move left sandboxes on the target"));
    moves.place(user, from);
    for (const slot of wasRunning) {
      await this.startSlot(user, slot).catch((err: unknown) => this.log.warn({ err, user, slot, host: from }, "after a failed move, the sandbox did not start again"));
    }
  }

  /** An open WebSocket keeps its sandbox active for as long as it is open. */
  socketOpened(target: Target): () => void {
    const r = this.running.get(key(target.user, target.slot));
    if (!r) return () => {};
    r.openSockets++;
    return () => {
      r.openSockets--;
      r.lastActivity = Date.now();
    };
  }

  /** Forget a target the proxy found unreachable, so the next request re-checks the runtime. */
  invalidate(target: Target): void {
    const k = key(target.user, target.slot);
    if (this.running.get(k)?.endpoint.port === target.endpoint.port) this.running.delete(k);
  }

  runningCount(): number {
    return this.running.size;
  }

  /** In-memory counts for the metrics scrape: no runtime call, whatever the number of users. */
  counts(): { running: number; starting: number } {
    return { running: this.running.size, starting: this.starting.size };
  }

  async status(users = this.routing.users()): Promise<SandboxStatus[]> {
    const infos = new Map((await this.runtime.list()).map((i) => [key(i.user, i.slot), i]));
    const pending: Array<Promise<SandboxStatus>> = [];
    for (const user of users) {
      const route = this.routing.route(user);
      for (const role of ROLES) {
        const slot = route[role];
        const info = infos.get(key(user, slot));
        const record = this.routing.slot(user, slot);
        const state = this.starting.has(key(user, slot)) ? "starting" : !info ? "not started" : info.running ? "running" : "stopped";
        const endpoint = info?.endpoint ?? null;
        // Probed together, so a listing costs one probe's time, not one per sandbox.
        pending.push(
          (async () => ({
            user,
            role,
            slot,
            generation: record.generationId,
            state,
            health: state === "running" && endpoint ? ((await this.health.probe(endpoint)) ? "healthy" : "unhealthy") : null,
            endpoint,
            startedAt: info?.startedAt ?? null,
          }))(),
        );
      }
    }
    return Promise.all(pending);
  }

  /**
   * What the role's sandbox printed (stdout and stderr), line by line, oldest first: the last
   * `tail` lines, then with `follow` each new one until the sandbox stops or the signal fires.
   */
  async *logs(user: string, role: Role, opts: LogRequest = {}): AsyncIterable<string> {
    const slot = this.routing.slotOf(user, role);
    const tail = Math.min(MAX_LOG_TAIL, Math.max(0, opts.tail ?? DEFAULT_LOG_TAIL));
    try {
      yield* this.runtime.logs(user, slot, { tail, follow: opts.follow ?? false, signal: opts.signal });
    } catch (err) {
      if (asHypervisorError(err).code !== "not_found") throw err;
      throw noLogsYet(user, role, err);
    }
  }

  private async timedStart(user: string, slot: Slot): Promise<Running> {
    const began = performance.now();
    try {
      const running = await this.startSlot(user, slot);
      this.metrics?.sandboxStarted((performance.now() - began) / 1000, "ok");
      return running;
    } catch (err) {
      this.metrics?.sandboxStarted((performance.now() - began) / 1000, "error");
      throw err;
    }
  }

  private async startSlot(user: string, slot: Slot): Promise<Running> {
    const record = this.routing.slot(user, slot);
    const generation = this.generations.require(record.generationId);
    const began = Date.now();
    const report = (phase: StartProgress["phase"], attempts: number) => {
      for (const listener of this.progressListeners) {
        try {
          listener({ user, slot, phase, attempts, elapsedMs: Date.now() - began });
        } catch (err) {
          // A listener that went away (a closed progress stream) must not fail the start.
          this.log.debug({ err, user, slot }, "start progress listener failed");
        }
      }
    };
    let lastReport = began;
    let failedProbes = 0;
    let info = await this.runtime.inspect(user, slot);
    if (info && (info.generationId !== generation.id || (info.outdated && !info.running))) {
      // The slot was given another generation, or an earlier release made its container: replace
      // the container, keep the data volume.
      await this.runtime.remove(user, slot, { removeData: false });
      info = undefined;
    }
    if (!info?.running) {
      this.reserveCapacity(user, slot);
      report("starting", 0);
      if (!info) await this.runtime.create(this.spec(user, slot, generation));
      info = await this.runtime.start(user, slot);
      this.routing.markStarted(user, slot);
    }
    if (!info.endpoint) throw new HypervisorError("internal", `sandbox ${info.name} runs without a published port`);
    const outcome = await waitHealthy(
      info.endpoint,
      began + this.config.startTimeoutMs,
      async () => Boolean((await this.runtime.inspect(user, slot))?.running),
      this.health,
      (attempts) => {
        failedProbes = attempts;
        if (Date.now() - lastReport < PROGRESS_EVERY_MS) return;
        lastReport = Date.now();
        report("waiting for health", attempts);
      },
    );
    if (outcome !== "healthy") {
      const logs = await logText(this.runtime.logs(user, slot, { tail: 20, follow: false })).catch(() => "");
      this.log.warn({ user, slot, generation: generation.id, outcome, logs }, "sandbox not healthy");
      throw new HypervisorError(
        "start_timeout",
        outcome === "exited"
          ? `sandbox ${info.name} exited before it became healthy`
          : `sandbox ${info.name} did not become healthy within ${this.config.startTimeoutMs} ms`,
        { user, slot, retryAfterSeconds: Math.max(1, Math.ceil(this.config.startTimeoutMs / 1000)) },
      );
    }
    report("healthy", failedProbes);
    const running = this.toRunning(info, info.endpoint);
    this.running.set(key(user, slot), running);
    this.log.info({ user, slot, generation: generation.id, ms: Date.now() - began }, "sandbox started");
    return running;
  }

  private async stopSlot(user: string, slot: Slot): Promise<void> {
    const k = key(user, slot);
    // A stop during a start waits for it, so the start cannot resurrect a stopped sandbox.
    await this.starting.get(k)?.catch(() => undefined);
    // A stop needs the runtime's API: while it is known to be down, refuse while still serving.
    const refused = this.runtime.unavailableFor?.(user);
    if (refused) throw refused;
    this.bump(k);
    const running = this.running.get(k);
    this.running.delete(k);
    try {
      if (!(await this.runtime.inspect(user, slot))) return;
      await this.runtime.stop(user, slot, STOP_TIMEOUT_MS);
    } catch (err) {
      // A stop the runtime's API could not take leaves the sandbox running: keep serving it.
      if (running && asHypervisorError(err).code === "runtime_unavailable" && !this.running.has(k)) this.running.set(k, running);
      throw err;
    }
    this.routing.markStopped(user, slot);
    this.log.info({ user, slot }, "sandbox stopped");
  }

  private reserveCapacity(user: string, slot: Slot): void {
    const busy = this.running.size + [...this.starting.keys()].filter((k) => k !== key(user, slot)).length;
    if (busy >= this.config.maxSandboxes) {
      throw new HypervisorError("capacity_exhausted", `all ${this.config.maxSandboxes} sandboxes are in use (HYPERVISOR_MAX_SANDBOXES); try again later`, {
        max: this.config.maxSandboxes,
        retryAfterSeconds: 30,
      });
    }
  }

  private bump(k: string): void {
    this.changes.set(k, (this.changes.get(k) ?? 0) + 1);
  }

  private async stopIdle(): Promise<void> {
    const cutoff = Date.now() - this.config.idleStopMs;
    for (const r of [...this.running.values()]) {
      if (r.openSockets > 0 || r.lastActivity > cutoff) continue;
      this.log.info({ user: r.user, slot: r.slot, idleMs: Date.now() - r.lastActivity }, "stopping idle sandbox");
      await this.stopSlot(r.user, r.slot).catch((err: unknown) => this.log.warn({ err, user: r.user, slot: r.slot }, "idle stop failed"));
    }
  }

  private spec(user: string, slot: Slot, generation: Generation) {
    return {
      user,
      slot,
      generation: { id: generation.id, version: generation.version, imageId: generation.imageId, command: generation.command },
      env: this.config.sandboxEnv,
      limits: this.config.sandboxLimits,
    };
  }

  private toRunning(info: SandboxInfo, endpoint: Endpoint): Running {
    return { user: info.user, slot: info.slot, endpoint, generationId: info.generationId, lastActivity: Date.now(), openSockets: 0 };
  }
}

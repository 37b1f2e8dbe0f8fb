import type { Logger } from "pino";
import type { Config } from "../config.js";
import { asHypervisorError, HypervisorError } from "../errors.js";
import type { Generation, GenerationStore } from "../generations/generation-store.js";
import type { Metrics } from "../metrics/metrics.js";
import type { AuditLog } from "../audit/audit-log.js";
import type { ContainerRuntime, Freezing, HealthProbe, Reachability, SandboxInfo } from "../runtime/container-runtime.js";
import type { Endpoint, Role, Slot, Target, TargetSource } from "../../proxy/target.js";
import type { RouteController } from "../routing/route-controller.js";
import type { UserDirectory } from "../users/user-directory.js";
import { logText } from "../runtime/log-lines.js";
import { waitHealthy } from "./health-check.js";
import { IdleTiers } from "./idle-tiers.js";

interface Running extends Target {
  lastActivity: number;
  openSockets: number;
  /** Frozen by idleness: still here, and the next request thaws it. */
  frozen: boolean;
  /** The freeze or thaw under way (never rejects): the next one, and a stop, wait for it. */
  change: Promise<void>;
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
  /** `creating` only when the runtime makes a new container (a new generation, a first start). */
  phase: "creating" | "starting" | "waiting for health" | "healthy";
  /** Failed health probes so far. */
  attempts: number;
  elapsedMs: number;
  /** What GET /health last answered, while waiting for health. */
  lastAnswer?: string;
}

/** What idleness will do to a running sandbox (SandboxManager.idlePlan). */
export interface IdlePlan {
  lastActivity: number;
  openSockets: number;
  freezeAt: number | null;
  stopAt: number | null;
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

export type ManagerConfig = Pick<
  Config,
  "startTimeoutMs" | "idleStopMs" | "idleFreezeMs" | "memoryReserveBytes" | "maxSandboxes" | "sandboxEnv" | "sandboxLimits" | "publicOrigin"
>;

const STOP_TIMEOUT_MS = 10_000;
/** How long a sandbox that already runs, but was never seen healthy, gets to answer its health check. */
const RUNNING_HEALTH_GRACE_MS = 2000;
const key = (user: string, slot: Slot) => `${user}/${slot}`;

const SLOTS: readonly Slot[] = ["a", "b"];

/** The runtime the manager drives and the capabilities it uses of it. */
export interface ManagedRuntime {
  runtime: ContainerRuntime;
  health: HealthProbe;
  /** Present with many hosts: which users' host is out of reach now. */
  reach?: Reachability;
  /** Present where the runtime can freeze: idle sandboxes are frozen before they are stopped. */
  freezing?: Freezing;
  /** The host's available memory in bytes; tests inject readings (default: /proc/meminfo). */
  memAvailable?: () => Promise<number>;
}

/**
 * A user whose requests are held (they wait, they do not fail): what an operation that takes
 * the user's sandboxes away for a while (a move between hosts) may do meanwhile.
 */
export interface HeldUser {
  /** The slots whose sandboxes ran when the hold began. */
  readonly wasRunning: Slot[];
  stop(slot: Slot): Promise<void>;
  /** Starts the slot's sandbox and waits until it is healthy; the held requests do not wait for this one. */
  start(slot: Slot): Promise<void>;
  /** Forgets what runs, so nothing started during the hold is served after it. */
  forget(): void;
  /**
   * Holds the slot's running sandbox still (frozen) for a consistent copy of its data: resolves
   * to what lets it go again (a thaw, or nothing for one that was frozen already), or undefined
   * where it cannot be frozen (no freezer, or the freeze failed): then stop it instead.
   */
  still(slot: Slot): Promise<(() => Promise<void>) | undefined>;
}

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
  /** Users whose requests are held (a move to another host): they wait instead of starting anything. */
  private readonly held = new Map<string, Promise<void>>();
  private readonly tiers: IdleTiers;
  private readonly runtime: ContainerRuntime;
  private readonly freezing: Freezing | undefined;
  private readonly health: HealthProbe;
  private readonly reach: Reachability | undefined;
  private readonly progressListeners = new Set<(p: StartProgress) => void>();

  constructor(
    sandboxes: ManagedRuntime,
    private readonly users: UserDirectory,
    private readonly routing: RouteController,
    private readonly generations: GenerationStore,
    private readonly config: ManagerConfig,
    private readonly log: Logger,
    private readonly metrics?: Pick<Metrics, "sandboxStarted" | "memoryPressed">,
    audit?: Pick<AuditLog, "record">,
  ) {
    this.runtime = sandboxes.runtime;
    this.health = sandboxes.health;
    this.reach = sandboxes.reach;
    this.freezing = sandboxes.freezing;
    this.tiers = new IdleTiers(
      config,
      {
        // A held user's sandboxes are the hold's to stop, freeze or thaw (a snapshot copies a frozen one).
        running: () => [...this.running.values()].filter((r) => !this.held.has(r.user)),
        ...(this.freezing ? { freeze: (r) => this.freeze(r as Running) } : {}),
        stop: (r) => this.stopSlot(r.user, r.slot),
      },
      log,
      { metrics, audit },
      sandboxes.memAvailable,
    );
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
    const candidates: { info: SandboxInfo; endpoint: Endpoint }[] = [];
    for (const info of infos) {
      if (!this.users.hasUser(info.user)) {
        ignored++;
        continue;
      }
      const k = key(info.user, info.slot);
      if (this.changes.get(k) !== seen.get(k)) continue;
      // A crash between assigning a generation and recreating the container leaves the old
      // one running: not adopted, so the next ensure replaces it (its data volume stays).
      if (info.generationId !== this.users.slot(info.user, info.slot).generationId) continue;
      if (info.running && info.endpoint) candidates.push({ info, endpoint: info.endpoint });
    }
    // A sandbox a crash caught between its start and its first healthy answer may be running yet
    // not serving: adopting it would route requests to a closed port. One probe each (frozen ones
    // cannot answer, and were healthy when frozen); one that fails is handed to a start, which
    // finds it running and waits for its health check instead of starting another.
    const healthy = await Promise.all(candidates.map(async ({ info, endpoint }) => info.frozen || (await this.health.probe(endpoint))));
    let unhealthy = 0;
    candidates.forEach(({ info, endpoint }, i) => {
      const k = key(info.user, info.slot);
      if (this.changes.get(k) !== seen.get(k)) return;
      if (!healthy[i]) {
        unhealthy++;
        // Waited for as a start, so it is counted and, once healthy, tracked (idle stop, capacity).
        void this.ensureSlot(info.user, info.slot).catch((err: unknown) =>
          this.log.warn({ err, user: info.user, slot: info.slot }, "a sandbox found running but unhealthy at adoption did not become healthy"),
        );
        return;
      }
      this.running.set(k, this.toRunning(info, endpoint));
      adopted++;
    });
    this.log.info({ adopted, unhealthy, ignored, runtime: this.runtime.kind }, "sandboxes adopted");
    return { adopted, ignored };
  }

  /** The idle tiers' sweep (freeze, stop) and the memory reserve's, until close(). */
  startIdleSweep(): void {
    this.tiers.start();
  }

  close(): void {
    this.tiers.close();
  }

  /**
   * Gives a slot another generation: the old container goes (its data volume stays) and the
   * next ensure creates one from the new generation. Call with the user's lock held.
   */
  async assignGeneration(user: string, slot: Slot, generationId: number): Promise<void> {
    await this.stopSlot(user, slot);
    await this.runtime.remove(user, slot, { removeData: false });
    this.users.setSlotGeneration(user, slot, generationId);
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
      const refused = this.reach?.unavailableFor(user);
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
    // A hold keeps the user's requests waiting and a down host refuses them: both take ensure()'s way.
    // A host whose API alone is down still serves what runs there.
    if (this.held.has(user)) return undefined;
    const running = this.running.get(key(user, this.routing.slotOf(user, role)));
    if (!running || this.reach?.unavailableFor(user, true)) return undefined;
    running.lastActivity = Date.now();
    // Frozen: the request is sent at once and waits in the sandbox's socket queue (the kernel
    // accepts for a frozen process) until the thaw, milliseconds later, lets it answer.
    if (running.frozen) void this.thaw(running);
    return running;
  }

  async ensureSlot(user: string, slot: Slot): Promise<Target> {
    const held = this.held.get(user);
    if (held) await held;
    const k = key(user, slot);
    const current = this.running.get(k);
    const refused = this.reach?.unavailableFor(user, current !== undefined);
    if (refused) throw refused;
    if (current) {
      current.lastActivity = Date.now();
      await this.thaw(current);
      // A thaw that failed forgot the sandbox: the start below looks at it again.
      if (this.running.get(k) === current) return current;
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

  /** Stops and removes both of the user's sandboxes; their data stays unless `removeData`. Call with the user's lock held. */
  async removeSandboxes(user: string, opts: { removeData: boolean }): Promise<void> {
    for (const slot of SLOTS) {
      await this.stopSlot(user, slot);
      await this.runtime.remove(user, slot, opts);
    }
  }

  /** Hears how every start goes until the returned function is called. */
  onStartProgress(listener: (p: StartProgress) => void): () => void {
    this.progressListeners.add(listener);
    return () => this.progressListeners.delete(listener);
  }

  /**
   * Runs fn with the user's requests held: they wait until fn settles instead of starting
   * anything, and what fn does to the user's sandboxes (stop, start) is not raced by them. Call
   * with the user's lock held.
   */
  async hold<T>(user: string, fn: (held: HeldUser) => Promise<T>): Promise<T> {
    let release!: () => void;
    this.held.set(
      user,
      new Promise<void>((resolve) => {
        release = resolve;
      }),
    );
    try {
      return await fn({
        wasRunning: SLOTS.filter((slot) => this.running.has(key(user, slot))),
        stop: (slot) => this.stopSlot(user, slot),
        start: async (slot) => {
          await this.startSlot(user, slot);
        },
        forget: () => {
          for (const slot of SLOTS) {
            this.bump(key(user, slot));
            this.running.delete(key(user, slot));
          }
        },
        still: async (slot) => {
          const r = this.running.get(key(user, slot));
          if (!r || !this.freezing) return undefined;
          if (r.frozen) {
            // Frozen by idleness, or a freeze still under way: still once it is done, if it held.
            await r.change;
            return r.frozen ? async () => {} : undefined;
          }
          await this.freeze(r);
          return r.frozen ? () => this.thaw(r) : undefined;
        },
      });
    } finally {
      this.held.delete(user);
      release();
    }
  }

  /**
   * When the slot's running sandbox will be frozen and stopped if nothing uses it before (ms
   * since the epoch; null for a tier that is off or will not come first), from its last
   * activity; undefined when it does not run. An open WebSocket keeps it as it is meanwhile.
   */
  idlePlan(user: string, slot: Slot): IdlePlan | undefined {
    const r = this.running.get(key(user, slot));
    if (!r) return undefined;
    const { idleFreezeMs, idleStopMs } = this.config;
    const stopAt = idleStopMs > 0 ? r.lastActivity + idleStopMs : null;
    const freezes = this.freezing !== undefined && !r.frozen && idleFreezeMs > 0 && (stopAt === null || idleFreezeMs < idleStopMs);
    return { lastActivity: r.lastActivity, openSockets: r.openSockets, freezeAt: freezes ? r.lastActivity + idleFreezeMs : null, stopAt };
  }

  /** Whether the slot's sandbox is frozen by idleness now. */
  isFrozen(user: string, slot: Slot): boolean {
    return this.running.get(key(user, slot))?.frozen ?? false;
  }

  /** An open WebSocket (or a request in flight) keeps its sandbox active for as long as it is open. */
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
  /** The runtime stopped the slot's sandbox itself: the next request or ensure starts it (or hears why not). */
  forgetStopped(user: string, slot: Slot): void {
    this.running.delete(key(user, slot));
  }

  invalidate(target: Target): void {
    const k = key(target.user, target.slot);
    if (this.running.get(k)?.endpoint.port === target.endpoint.port) this.running.delete(k);
  }

  runningCount(): number {
    return this.running.size;
  }

  /** In-memory counts for the metrics scrape: no runtime call, whatever the number of users. */
  counts(): { running: number; frozen: number; starting: number } {
    let frozen = 0;
    for (const r of this.running.values()) if (r.frozen) frozen++;
    return { running: this.running.size - frozen, frozen, starting: this.starting.size };
  }

  /** Whether a start of the slot's sandbox is under way. */
  isStarting(user: string, slot: Slot): boolean {
    return this.starting.has(key(user, slot));
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
    const record = this.users.slot(user, slot);
    const generation = this.generations.require(record.generationId);
    const began = Date.now();
    const report = (phase: StartProgress["phase"], attempts: number, lastAnswer?: string) => {
      for (const listener of this.progressListeners) {
        try {
          listener({ user, slot, phase, attempts, elapsedMs: Date.now() - began, ...(lastAnswer === undefined ? {} : { lastAnswer }) });
        } catch (err) {
          // A listener that went away (a closed progress stream) must not fail the start.
          this.log.debug({ err, user, slot }, "start progress listener failed");
        }
      }
    };
    let lastReport = began;
    let failedProbes = 0;
    let lastAnswer: string | undefined;
    let info = await this.runtime.inspect(user, slot);
    if (info && (info.generationId !== generation.id || (info.outdated && !info.running))) {
      // The slot was given another generation, or an earlier release made its container: replace
      // the container, keep the data volume.
      await this.runtime.remove(user, slot, { removeData: false });
      info = undefined;
    }
    if (info?.running && info.frozen) {
      // Frozen, but not known here as such (a thaw that failed, or one a crash interrupted).
      if (!this.freezing) throw new HypervisorError("internal", `sandbox ${info.name} is frozen and this runtime cannot thaw it`);
      await this.freezing.thaw(user, slot);
      info = { ...info, frozen: false };
    }
    if (!info?.running) {
      this.reserveCapacity(user, slot);
      await this.tiers.admitStart(user, slot);
      if (!info) {
        report("creating", 0);
        await this.runtime.create(this.spec(user, slot, generation));
      }
      report("starting", 0);
      info = await this.runtime.start(user, slot);
      this.users.markStarted(user, slot);
    }
    if (!info.endpoint) throw new HypervisorError("internal", `sandbox ${info.name} runs without a published port`);
    // Said as the wait begins, so the step's time is when it began, not the first throttled report.
    report("waiting for health", 0);
    lastReport = Date.now();
    const outcome = await waitHealthy(
      info.endpoint,
      began + this.config.startTimeoutMs,
      async () => Boolean((await this.runtime.inspect(user, slot))?.running),
      this.health,
      (attempts, answer) => {
        failedProbes = attempts;
        lastAnswer = answer.said;
        if (Date.now() - lastReport < PROGRESS_EVERY_MS) return;
        lastReport = Date.now();
        report("waiting for health", attempts, lastAnswer);
      },
    );
    if (outcome !== "healthy") {
      const logs = await logText(this.runtime.logs(user, slot, { tail: 20, follow: false })).catch(() => "");
      this.log.warn({ user, slot, generation: generation.id, outcome, probes: failedProbes, lastAnswer, logs }, "sandbox not healthy");
      throw new HypervisorError(
        "start_timeout",
        outcome === "exited"
          ? `sandbox ${info.name} exited before it became healthy`
          : `sandbox ${info.name} did not become healthy within ${this.config.startTimeoutMs} ms` +
              (lastAnswer ? `; GET /health last answered: ${lastAnswer}` : "; GET /health was never asked"),
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
    const refused = this.reach?.unavailableFor(user);
    if (refused) throw refused;
    this.bump(k);
    const running = this.running.get(k);
    this.running.delete(k);
    // A freeze under way would hold the processes the stop signals.
    await running?.change;
    try {
      if (!(await this.runtime.inspect(user, slot))) return;
      await this.runtime.stop(user, slot, STOP_TIMEOUT_MS);
    } catch (err) {
      // A stop the runtime's API could not take leaves the sandbox running: keep serving it.
      if (running && asHypervisorError(err).code === "runtime_unavailable" && !this.running.has(k)) this.running.set(k, running);
      throw err;
    }
    this.users.markStopped(user, slot);
    this.log.info({ user, slot }, "sandbox stopped");
  }

  /**
   * Frozen sandboxes hold memory (the memory reserve watches it), not CPU: they do not count
   * toward HYPERVISOR_MAX_SANDBOXES, and a thaw is never refused for capacity.
   */
  private reserveCapacity(user: string, slot: Slot): void {
    const busy = this.counts().running + [...this.starting.keys()].filter((k) => k !== key(user, slot)).length;
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

  /** Freezes a sandbox (idle, or for a snapshot); one that fails to freeze stays as it was, running. */
  private freeze(r: Running): Promise<void> {
    const freezing = this.freezing!;
    r.frozen = true;
    r.change = r.change
      .then(() => freezing.freeze(r.user, r.slot))
      .catch((err: unknown) => {
        r.frozen = false;
        this.log.warn({ err, user: r.user, slot: r.slot }, "idle freeze failed");
      });
    return r.change;
  }

  /** Wakes a frozen sandbox; one that fails to thaw is forgotten, so the next request looks at it again. */
  private thaw(r: Running): Promise<void> {
    if (!r.frozen) return r.change;
    r.frozen = false;
    const began = performance.now();
    r.change = r.change
      .then(() => this.freezing!.thaw(r.user, r.slot))
      .then(
        () => this.log.debug({ user: r.user, slot: r.slot, ms: performance.now() - began }, "sandbox thawed"),
        (err: unknown) => {
          this.log.warn({ err, user: r.user, slot: r.slot }, "thaw failed");
          this.invalidate(r);
        },
      );
    return r.change;
  }

  private spec(user: string, slot: Slot, generation: Generation) {
    return {
      user,
      slot,
      generation: { id: generation.id, version: generation.version, imageId: generation.imageId, command: generation.command },
      // The account page's address: a sandbox on its own origin cannot link there by path alone.
      env: { ...this.config.sandboxEnv, HYPERVISOR_ACCOUNT_URL: new URL("/_hv/account", this.config.publicOrigin).href },
      limits: this.config.sandboxLimits,
    };
  }

  private toRunning(info: SandboxInfo, endpoint: Endpoint): Running {
    return {
      user: info.user,
      slot: info.slot,
      endpoint,
      generationId: info.generationId,
      lastActivity: Date.now(),
      openSockets: 0,
      frozen: Boolean(info.frozen),
      change: Promise.resolve(),
    };
  }
}

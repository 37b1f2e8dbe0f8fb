import type { Logger } from "pino";
import type { Config } from "../config.js";
import { asHypervisorError, HypervisorError } from "../errors.js";
import { wrongRuntime, type Generation, type GenerationStore } from "../generations/generation-store.js";
import type { Metrics, ReleaseKind } from "../metrics/metrics.js";
import { eachLimited, type UserOutcome } from "../operations/batch.js";
import type { Slot } from "../../proxy/target.js";
import type { RouteController } from "../routing/route-controller.js";
import type { UserDirectory } from "../users/user-directory.js";
import type { SandboxManager } from "../sandboxes/sandbox-manager.js";

export interface Placement {
  slot: Slot;
  generation: number;
}

export interface UserResult extends UserOutcome {
  /** What live was before, and what it is now (swap, rollback) or what dev runs (deploy). */
  from?: Placement;
  to?: Placement;
  path?: "warm" | "cold";
}

export type ReleaseConfig = Pick<Config, "rollbackDeadlineMs">;

/** Deploys touch containers: a few at a time, so a fleet deploy does not starve live traffic. */
const DEPLOY_CONCURRENCY = 4;
/** Swaps and warm rollbacks are route flips; more can run at once. */
const FLIP_CONCURRENCY = 16;

/**
 * Deploy, swap and rollback, per user and serialised per user. Each reads as one sentence:
 * ensure the target → wait until healthy → install the route (persisted first) → the proxy
 * drains the replaced target → record. Routes change only through the route controller, and
 * sandboxes only through the manager; each user's step runs under the user's lock.
 */
export class ReleaseController {
  constructor(
    private readonly users: UserDirectory,
    private readonly routing: RouteController,
    private readonly manager: SandboxManager,
    private readonly generations: GenerationStore,
    private readonly config: ReleaseConfig,
    private readonly log: Logger,
    private readonly metrics?: Pick<Metrics, "releaseStep">,
  ) {}

  async deploy(generationId: number, users: string[], onResult?: (r: UserResult) => void): Promise<UserResult[]> {
    const generation = this.runnable(this.generations.require(generationId));
    if (generation.state === "bad")
      throw new HypervisorError("conflict", `generation ${generation.id} is marked bad (hypervisorctl generations lists the others)`);
    return eachLimited(users, DEPLOY_CONCURRENCY, onResult, (user) =>
      this.forUser("deploy", user, async () => {
        const slot = this.routing.slotOf(user, "dev");
        const current = this.users.slot(user, slot).generationId;
        if (current !== generation.id) await this.manager.assignGeneration(user, slot, generation.id);
        try {
          await this.manager.ensureSlot(user, slot);
        } catch (err) {
          throw this.failedDeploy(user, current, generation.id, err);
        }
        return { from: { slot, generation: current }, to: { slot, generation: generation.id } };
      }),
    );
  }

  async swap(users: string[], force: boolean, onResult?: (r: UserResult) => void): Promise<UserResult[]> {
    return eachLimited(users, FLIP_CONCURRENCY, onResult, (user) =>
      this.forUser("swap", user, async () => {
        if (!force) await this.manager.ensureHealthy(user, this.routing.slotOf(user, "dev"));
        return this.flip(user);
      }),
    );
  }

  /**
   * Live goes back to the newest known-good generation other than live's (or `to`): warm when
   * dev already holds it, cold otherwise (started in the dev slot). Live keeps serving until
   * the target is healthy; past the deadline the user's result fails and live is untouched.
   */
  async rollback(users: string[], to: number | undefined, onResult?: (r: UserResult) => void): Promise<UserResult[]> {
    const explicit = to === undefined ? undefined : this.runnable(this.generations.require(to));
    if (explicit?.state === "bad")
      throw new HypervisorError("conflict", `generation ${explicit.id} is marked bad (hypervisorctl generations lists the others)`);
    const deadline = Date.now() + this.config.rollbackDeadlineMs;
    return eachLimited(users, FLIP_CONCURRENCY, onResult, (user) =>
      this.forUser(
        "rollback",
        user,
        async (expired, note) => {
          // Queued behind another step of this user past the deadline: the caller has been told
          // it failed, so it must not touch dev (a deploy may have just put something there).
          if (expired()) throw deadlineExceeded(user);
          const route = this.routing.route(user);
          const liveGeneration = this.users.slot(user, route.live).generationId;
          const target = explicit ?? this.newestKnownGoodOtherThan(liveGeneration);
          if (target.id === liveGeneration) throw new HypervisorError("conflict", `generation ${target.id} is already live for ${user}`);
          let path: "warm" | "cold" = "warm";
          if (this.users.slot(user, route.dev).generationId !== target.id) {
            path = note.path = "cold";
            await this.manager.assignGeneration(user, route.dev, target.id);
          } else if (!(await this.manager.healthy(user, route.dev))) {
            path = "cold";
          }
          note.path = path;
          // Warm, dev has just answered its health check: a second probe would only double the cost.
          if (path === "cold") await this.manager.ensureHealthy(user, route.dev);
          return { ...(await this.flip(user, expired)), path };
        },
        deadline,
      ),
    );
  }

  /**
   * Flips the user's route. Past the deadline it refuses: the caller has already been told the
   * rollback failed, so live must stay as it is. The route controller runs the check
   * synchronously with the write, so a deadline timer cannot fire between them.
   */
  private async flip(user: string, expired: () => boolean = () => false): Promise<{ from: Placement; to: Placement }> {
    const { replaced, installed } = await this.routing.flip(user, () => {
      if (expired()) throw deadlineExceeded(user);
    });
    const from = { slot: replaced.live, generation: this.users.slot(user, replaced.live).generationId };
    const to = { slot: installed.live, generation: this.users.slot(user, installed.live).generationId };
    this.log.info({ user, from, to }, "route flipped");
    return { from, to };
  }

  /**
   * A deploy whose sandbox did not become healthy: dev stays on the new generation, so its logs
   * can be read and a fix can be deployed over it, and a swap refuses it while it is unhealthy;
   * live is untouched. The message says so, and how to put the previous generation back.
   */
  private failedDeploy(user: string, previous: number, deployed: number, err: unknown): HypervisorError {
    const e = asHypervisorError(err);
    if (e.code !== "start_timeout" && e.code !== "unhealthy_target") return e;
    const back = previous === deployed ? "" : `; hypervisorctl deploy ${previous} --users ${user} puts generation ${previous} back`;
    return new HypervisorError(
      e.code,
      `${e.message}; live is unchanged, dev stays on generation ${deployed} and swap refuses it while it is unhealthy (see hypervisorctl logs ${user} dev${back})`,
      { ...e.details, user, devGeneration: deployed, previousDevGeneration: previous },
      { cause: err },
    );
  }

  private newestKnownGoodOtherThan(live: number): Generation {
    const candidates = this.generations.list().filter((g) => g.runtime === this.manager.runtimeKind && g.state === "known-good" && g.id !== live);
    const newest = candidates.at(-1);
    if (!newest)
      throw new HypervisorError("no_known_good", "there is no known-good generation to roll back to (mark one with hypervisorctl generations known-good ID)");
    return newest;
  }

  private runnable(g: Generation): Generation {
    if (g.runtime !== this.manager.runtimeKind) {
      throw wrongRuntime(`generation ${g.id} is for the ${g.runtime} runtime; this hypervisor runs ${this.manager.runtimeKind}`);
    }
    return g;
  }

  /** Runs one user's step under the user's lock, bounded by the deadline, as a result row. */
  private async forUser(
    kind: ReleaseKind,
    user: string,
    step: (expired: () => boolean, note: { path?: "warm" | "cold" }) => Promise<Omit<UserResult, "user" | "ok" | "durationMs">>,
    deadline?: number,
  ): Promise<UserResult> {
    const began = Date.now();
    const clock = { expired: false };
    // The path a rollback took, known before it fails too (a cold start past the deadline).
    const note: { path?: "warm" | "cold" } = {};
    const work = this.users.withUserLock(user, () => step(() => clock.expired || (deadline !== undefined && Date.now() >= deadline), note));
    try {
      const outcome = deadline === undefined ? await work : await withDeadline(work, deadline, user, clock);
      this.metrics?.releaseStep(kind, (Date.now() - began) / 1000, "ok", note.path);
      return { user, ok: true, ...outcome, durationMs: Date.now() - began };
    } catch (err) {
      const e = asHypervisorError(err);
      if (e.code === "internal") this.log.error({ err: e.cause ?? e, user }, "release step failed");
      this.metrics?.releaseStep(kind, (Date.now() - began) / 1000, "error", note.path);
      return { user, ok: false, durationMs: Date.now() - began, error: { code: e.code, message: withHint(kind, user, e) } };
    }
  }
}

/** What to run next when a user's step failed because its target is not healthy. */
function withHint(kind: ReleaseKind, user: string, e: HypervisorError): string {
  // A failed deploy has said what follows and where to look already (failedDeploy).
  if (kind === "deploy" || (e.code !== "unhealthy_target" && e.code !== "start_timeout")) return e.message;
  const force = kind === "swap" ? `; hypervisorctl swap --users ${user} --force swaps anyway` : "";
  return `${e.message} (see hypervisorctl logs ${user} dev${force})`;
}

function deadlineExceeded(user: string): HypervisorError {
  return new HypervisorError("deadline_exceeded", `rollback of ${user} did not finish within HYPERVISOR_ROLLBACK_DEADLINE_MS; live is unchanged`, { user });
}

/**
 * Resolves with the work, or rejects at the deadline. The work is not cancelled (a cold start
 * may still finish in the dev slot), but its flip checks the same deadline, so it can never
 * change live after the caller was told it failed.
 */
async function withDeadline<T>(work: Promise<T>, deadline: number, user: string, clock: { expired: boolean }): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => {
        clock.expired = true;
        reject(deadlineExceeded(user));
      },
      Math.max(0, deadline - Date.now()),
    );
  });
  try {
    return await Promise.race([work, expired]);
  } finally {
    clearTimeout(timer);
  }
}

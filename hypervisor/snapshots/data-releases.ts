import type { Logger } from "pino";
import type { Config } from "../config.js";
import { crashPoint } from "../crash-points.js";
import { asHypervisorError, HypervisorError } from "../errors.js";
import type { Generation, GenerationStore } from "../generations/generation-store.js";
import { eachLimited, type UserOutcome } from "../operations/batch.js";
import type { Slot } from "../../proxy/target.js";
import type { RouteController } from "../routing/route-controller.js";
import type { HeldUser, SandboxManager } from "../sandboxes/sandbox-manager.js";
import type { UserDirectory } from "../users/user-directory.js";
import type { Snapshot } from "./snapshot-store.js";
import type { Snapshots } from "./snapshots.js";

export interface DataPlacement {
  slot: Slot;
  generation: number;
}

/** One user's promote, rollback with data or fork, as a batch reports it. */
export interface DataResult extends UserOutcome {
  /** What live (promote, rollback) or dev (fork) ran before, and runs now. */
  from?: DataPlacement;
  to?: DataPlacement;
  /** The snapshot taken on the way: the rollback point (promote), the data forked (fork). */
  snapshot?: string;
  /** The snapshot that keeps the data a restore replaced. */
  kept?: string;
  /** The new generation was not healthy in time: live runs its old generation on its old data again. */
  backedOut?: boolean;
}

export type DataReleaseConfig = Pick<Config, "promoteDeadlineMs">;

/** Each user's promote is a stop, a copy and a start: a few at a time. */
const CONCURRENCY = 4;

/**
 * The releases that move data as well as code (DESIGN §2a), beside the ReleaseController's route
 * flips: promote (dev's generation on live's own data), rollback with data (the known-good
 * generation on the data it left), fork (dev gets a copy of live's data). Each user's step runs
 * under the user's lock with the user's requests held, so none fails: they wait, then reach
 * whatever live is at the end. A new generation that is not healthy in time is backed out, its
 * data restored; whatever it wrote is kept as a snapshot, never lost.
 */
export class DataReleases {
  constructor(
    private readonly users: UserDirectory,
    private readonly routing: RouteController,
    private readonly manager: SandboxManager,
    private readonly generations: GenerationStore,
    private readonly snapshots: Snapshots,
    private readonly config: DataReleaseConfig,
    private readonly log: Logger,
  ) {}

  /** Dev's generation takes over live, on live's data; `pre-promote` keeps live's data as it was. */
  promote(users: string[], onResult?: (r: DataResult) => void): Promise<DataResult[]> {
    return eachLimited(users, CONCURRENCY, onResult, (user) =>
      this.forUser(user, async (held) => {
        const route = this.routing.route(user);
        const from = this.users.slot(user, route.live).generationId;
        const to = this.users.slot(user, route.dev).generationId;
        if (from === to) throw new HypervisorError("conflict", `dev runs generation ${to}, which is already live for ${user}`, { user });
        this.usable(this.generations.require(to));
        return this.replaceLive(user, held, route.live, from, to, async () => {
          const point = await this.snapshots.take(user, route.live, "pre-promote").catch(noData);
          return { point, kept: undefined };
        });
      }),
    );
  }

  /**
   * Live goes back to the newest known-good generation other than live's (or `to`) and to the data
   * that generation left: its `pre-promote` snapshot. Live's data now is kept as `pre-rollback`.
   */
  rollback(users: string[], to: number | undefined, onResult?: (r: DataResult) => void): Promise<DataResult[]> {
    const explicit = to === undefined ? undefined : this.usable(this.generations.require(to));
    return eachLimited(users, CONCURRENCY, onResult, (user) =>
      this.forUser(user, async (held) => {
        const liveSlot = this.routing.slotOf(user, "live");
        const from = this.users.slot(user, liveSlot).generationId;
        const target = explicit ?? this.newestKnownGoodOtherThan(from);
        if (target.id === from) throw new HypervisorError("conflict", `generation ${target.id} is already live for ${user}`, { user });
        const point = this.snapshots.rollbackPoint(user, target.id);
        if (!point) {
          throw new HypervisorError(
            "conflict",
            `${user} has no data of generation ${target.id} to go back to (no promote from it kept a pre-promote snapshot); hypervisorctl rollback without --data restores the generation alone`,
            { user, generation: target.id },
          );
        }
        return this.replaceLive(user, held, liveSlot, from, target.id, async () => {
          const { kept } = await this.snapshots.restoreInto(user, liveSlot, point, "pre-rollback");
          return { point: kept, kept: kept?.id, restored: point.id };
        });
      }),
    );
  }

  /** Dev's data becomes a copy of live's (dev's own kept as a snapshot first); live is still only while it is copied. */
  async fork(user: string): Promise<DataResult> {
    this.users.record(user);
    return this.forUser(user, async (held) => {
      const route = this.routing.route(user);
      const taken = await this.snapshots.quiesced(held, user, route.live, () => this.snapshots.take(user, route.live, "fork"));
      if (this.snapshots.runs(user, route.dev)) await held.stop(route.dev);
      const { kept } = await this.snapshots.restoreInto(user, route.dev, taken, "pre-restore");
      await held.start(route.dev);
      const dev = { slot: route.dev, generation: this.users.slot(user, route.dev).generationId };
      return { from: dev, to: dev, snapshot: taken.id, ...(kept ? { kept: kept.id } : {}) };
    });
  }

  /**
   * Stops live, runs `prepare` on its still data (a snapshot, a restore), starts live with `to`
   * and waits for health within the promote deadline. Past it, or unhealthy: the data goes back
   * to the rollback point (what the new generation wrote kept as `pre-restore`) and `from` runs
   * again. The WebSockets on the old sandbox close with 1012 as it stops.
   */
  private async replaceLive(
    user: string,
    held: HeldUser,
    slot: Slot,
    from: number,
    to: number,
    prepare: () => Promise<{ point: Snapshot | undefined; kept: string | undefined; restored?: string }>,
  ): Promise<Omit<DataResult, "user" | "ok" | "durationMs">> {
    const deadline = Date.now() + this.config.promoteDeadlineMs;
    this.routing.slotReplaced(user, slot);
    if (this.snapshots.runs(user, slot)) await held.stop(slot);
    crashPoint("live-stopped");
    const { point, kept, restored } = await prepare();
    crashPoint("live-prepared");
    await this.manager.assignGeneration(user, slot, to);
    crashPoint("live-assigned");
    try {
      await startBy(held, slot, deadline);
    } catch (err) {
      const e = asHypervisorError(err);
      this.log.warn({ user, slot, from, to, err: e.message }, "the new generation is not healthy: backing out");
      const back = await this.backOut(user, held, slot, from, point);
      throw new HypervisorError(
        e.code === "deadline_exceeded" ? "deadline_exceeded" : "unhealthy_target",
        `generation ${to} did not become healthy for ${user} (${e.message}); backed out: live runs generation ${from} on the data it had` +
          (back ? `, and what generation ${to} wrote is snapshot ${back}` : ""),
        { user, backedOut: true, ...(back ? { kept: back } : {}) },
        { cause: err },
      );
    }
    this.log.info({ user, slot, from, to, snapshot: point?.id }, "live replaced on its own data");
    return {
      from: { slot, generation: from },
      to: { slot, generation: to },
      ...(restored ? { snapshot: restored } : point ? { snapshot: point.id } : {}),
      ...(kept ? { kept } : {}),
    };
  }

  /** Live back to `generation` on the data of `point`; returns the snapshot keeping what the failed start wrote. */
  private async backOut(user: string, held: HeldUser, slot: Slot, generation: number, point: Snapshot | undefined): Promise<string | undefined> {
    await held.stop(slot);
    const restored = point ? await this.snapshots.restoreInto(user, slot, point, "pre-restore") : undefined;
    await this.manager.assignGeneration(user, slot, generation);
    await held
      .start(slot)
      .catch((err: unknown) => this.log.error({ err, user, slot, generation }, "after backing out, the old generation did not start either"));
    return restored?.kept?.id;
  }

  private newestKnownGoodOtherThan(live: number): Generation {
    const newest = this.generations
      .list()
      .filter((g) => g.runtime === this.manager.runtimeKind && g.state === "known-good" && g.id !== live)
      .at(-1);
    if (!newest)
      throw new HypervisorError("no_known_good", "there is no known-good generation to roll back to (mark one with hypervisorctl generations known-good ID)");
    return newest;
  }

  private usable(g: Generation): Generation {
    if (g.runtime !== this.manager.runtimeKind)
      throw new HypervisorError("conflict", `generation ${g.id} is for the ${g.runtime} runtime; this hypervisor runs ${this.manager.runtimeKind}`);
    if (g.state === "bad") throw new HypervisorError("conflict", `generation ${g.id} is marked bad (hypervisorctl generations lists the others)`);
    return g;
  }

  /** One user's step under the lock with requests held, as a result row: a failure is a result too. */
  private async forUser(user: string, step: (held: HeldUser) => Promise<Omit<DataResult, "user" | "ok" | "durationMs">>): Promise<DataResult> {
    const began = Date.now();
    try {
      const outcome = await this.users.withUserLock(user, () => this.manager.hold(user, step));
      return { user, ok: true, ...outcome, durationMs: Date.now() - began };
    } catch (err) {
      const e = asHypervisorError(err);
      if (e.code === "internal") this.log.error({ err: e.cause ?? e, user }, "data release step failed");
      const details = e.details as { backedOut?: boolean; kept?: string } | undefined;
      return {
        user,
        ok: false,
        durationMs: Date.now() - began,
        ...(details?.backedOut ? { backedOut: true } : {}),
        ...(details?.kept ? { kept: details.kept } : {}),
        error: { code: e.code, message: e.message },
      };
    }
  }
}

/** A slot that never had data has no rollback point: the promote goes on without one. */
function noData(err: unknown): undefined {
  if (asHypervisorError(err).code === "not_found") return undefined;
  throw err;
}

/**
 * Starts the slot and waits until it is healthy, by the deadline: past it the sandbox is stopped,
 * which ends the start's wait at once, and the step fails with deadline_exceeded.
 */
async function startBy(held: HeldUser, slot: Slot, deadline: number): Promise<void> {
  let late = false;
  const timer = setTimeout(
    () => {
      late = true;
      void held.stop(slot).catch(() => undefined);
    },
    Math.max(0, deadline - Date.now()),
  );
  try {
    await held.start(slot);
  } catch (err) {
    if (late) throw new HypervisorError("deadline_exceeded", "HYPERVISOR_PROMOTE_DEADLINE_MS passed", undefined, { cause: err });
    throw err;
  } finally {
    clearTimeout(timer);
  }
  if (late) throw new HypervisorError("deadline_exceeded", "HYPERVISOR_PROMOTE_DEADLINE_MS passed");
}

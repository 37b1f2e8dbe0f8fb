import { randomBytes } from "node:crypto";
import type { Readable } from "node:stream";
import type { Logger } from "pino";
import type { Config } from "../config.js";
import { crashPoint } from "../crash-points.js";
import { asHypervisorError, HypervisorError } from "../errors.js";
import type { Role, Slot } from "../../proxy/target.js";
import type { RouteController } from "../routing/route-controller.js";
import type { CopyMethod, SlotData, SnapshotSpace } from "../runtime/slot-data.js";
import type { HeldUser, SandboxManager } from "../sandboxes/sandbox-manager.js";
import type { UserDirectory } from "../users/user-directory.js";
import type { Snapshot, SnapshotReason, SnapshotStore } from "./snapshot-store.js";
import { PathSnapshotSpace } from "./path-space.js";

export type SnapshotsConfig = Pick<Config, "snapshotKeep">;

export const SNAPSHOT_ID = /^[0-9a-f]{12}$/;

/** What a restore did: the method of its copy, and the snapshot that keeps the data it replaced. */
export interface RestoreOutcome {
  method: CopyMethod;
  kept: Snapshot | undefined;
}

/**
 * Snapshots of slot data (DESIGN §2a): taken while the sandbox is still, copy-on-write where the
 * file system has it, recorded last (a snapshot's bytes are complete under its id before it is
 * recorded: anything its slot's space holds without a record is half-written and is removed),
 * pruned to `HYPERVISOR_SNAPSHOT_KEEP` automatic ones per user and slot, and never a restore
 * without the data it replaces kept as a snapshot first. The bytes are a SnapshotSpace's:
 * directories beside the data on this machine, or volumes on the user's Podman host. Every step
 * on a user's data runs under the user's lock.
 */
export class Snapshots {
  /** Slots whose snapshot directory has been checked for a crash's leftovers since this start. */
  private readonly recovered = new Set<string>();
  /** Snapshots being streamed out: deleting or pruning one waits for the next time. */
  private readonly exporting = new Map<string, number>();

  constructor(
    private readonly store: SnapshotStore,
    private readonly slotData: SlotData | undefined,
    private readonly users: UserDirectory,
    private readonly routing: RouteController,
    private readonly manager: SandboxManager,
    private readonly config: SnapshotsConfig,
    private readonly log: Logger,
  ) {}

  /** A slot named as a slot, or as the role it has now. */
  slotOf(user: string, slotOrRole: Slot | Role): Slot {
    return slotOrRole === "live" || slotOrRole === "dev" ? this.routing.slotOf(user, slotOrRole) : slotOrRole;
  }

  list(user: string): Snapshot[] {
    this.users.record(user);
    return this.store.list(user);
  }

  /** The user's snapshot; not_found for an unknown id and for another user's alike. */
  get(user: string, id: string): Snapshot {
    const s = SNAPSHOT_ID.test(id) ? this.store.get(user, id) : undefined;
    if (!s) throw new HypervisorError("not_found", `${user} has no snapshot ${id} (hypervisorctl snapshots list ${user})`, { user, id });
    return s;
  }

  /** A manual snapshot of the slot, taken with the user's requests held and the sandbox still. */
  async create(user: string, slotOrRole: Slot | Role): Promise<Snapshot> {
    this.users.record(user);
    return this.users.withUserLock(user, () =>
      this.manager.hold(user, async (held) => {
        const slot = this.slotOf(user, slotOrRole);
        return this.quiesced(held, user, slot, () => this.take(user, slot, "manual"));
      }),
    );
  }

  /** Restores a snapshot into a slot (its own by default); the slot's data before is kept as `pre-restore`. */
  async restore(user: string, id: string, slotOrRole?: Slot | Role): Promise<RestoreOutcome & { restored: Snapshot; slot: Slot }> {
    this.get(user, id);
    return this.users.withUserLock(user, () =>
      this.manager.hold(user, async (held) => {
        const restored = this.get(user, id);
        const slot = slotOrRole ? this.slotOf(user, slotOrRole) : restored.slot;
        const wasRunning = this.runs(user, slot);
        if (wasRunning) await held.stop(slot);
        const outcome = await this.restoreInto(user, slot, restored, "pre-restore");
        if (wasRunning) await held.start(slot);
        return { ...outcome, restored, slot };
      }),
    );
  }

  setPinned(user: string, id: string, pinned: boolean): Snapshot {
    this.get(user, id);
    this.store.setPinned(user, id, pinned);
    return this.get(user, id);
  }

  async delete(user: string, id: string): Promise<void> {
    this.get(user, id);
    await this.users.withUserLock(user, async () => {
      const s = this.get(user, id);
      if (this.exporting.has(id)) throw new HypervisorError("conflict", `snapshot ${id} is being exported; delete it when that is done`, { user, id });
      await this.discard(s);
    });
  }

  /** The snapshot's data as a tar stream (paths relative to `/data`, owners numeric). */
  async export(user: string, id: string): Promise<Readable> {
    const s = this.get(user, id);
    const tar = await (await this.space(s.user, s.slot)).exportTar(id);
    this.exporting.set(id, (this.exporting.get(id) ?? 0) + 1);
    const done = () => {
      const n = (this.exporting.get(id) ?? 1) - 1;
      if (n > 0) this.exporting.set(id, n);
      else this.exporting.delete(id);
    };
    tar.once("close", done);
    tar.once("error", (err) => this.log.warn({ err, user, id }, "snapshot export failed"));
    return tar;
  }

  /** The data `generation` left when the release after it was promoted: its newest pre-promote snapshot. */
  rollbackPoint(user: string, generation: number): Snapshot | undefined {
    return this.store.rollbackPoint(user, generation);
  }

  /** Removes every snapshot of a user whose data is purged: a later user of that name must never see them. */
  async purge(user: string): Promise<void> {
    for (const slot of ["a", "b"] as const) {
      const space = await this.locate(user, slot).catch(() => undefined);
      await space?.purge().catch((err: unknown) => this.log.warn({ err, user, slot }, "snapshots not removed"));
      this.recovered.delete(`${user}/${slot}`);
    }
    for (const s of this.store.list(user)) this.store.remove(s.id);
  }

  /** Checks every slot with snapshots for a crash's leftovers (at start, in the background). */
  async recoverAll(): Promise<void> {
    const slots = new Map<string, { user: string; slot: Slot }>();
    for (const s of this.store.slots()) slots.set(`${s.user}/${s.slot}`, s);
    for (const user of this.users.users()) for (const slot of ["a", "b"] as const) slots.set(`${user}/${slot}`, { user, slot });
    for (const { user, slot } of slots.values()) {
      await this.users
        .withUserLock(user, () => this.recover(user, slot))
        .catch((err: unknown) => this.log.warn({ err, user, slot }, "snapshot recovery failed"));
    }
  }

  // --- steps for the use cases that hold the user's lock and requests already ------------------

  /** Whether the slot's sandbox runs (or is starting): what a quiesce must stop and a resume start again. */
  runs(user: string, slot: Slot): boolean {
    return this.manager.isRunning(user, slot) || this.manager.isStarting(user, slot);
  }

  /**
   * Runs fn while the slot's sandbox cannot write: the one place that says how. A running sandbox
   * is frozen and thawed (its memory, open tasks and connections kept; milliseconds); where the
   * runtime cannot freeze it, or it is still starting, it is stopped and started again. Its
   * requests are held meanwhile either way.
   */
  async quiesced<T>(held: HeldUser, user: string, slot: Slot, fn: () => Promise<T>): Promise<T> {
    const wasRunning = this.runs(user, slot);
    const release = wasRunning ? await held.still(slot) : undefined;
    if (release) {
      try {
        return await fn();
      } finally {
        await release();
      }
    }
    if (wasRunning) await held.stop(slot);
    let result: T;
    try {
      result = await fn();
    } catch (err) {
      if (wasRunning)
        await held.start(slot).catch((e: unknown) => this.log.warn({ err: e, user, slot }, "sandbox did not start again after a failed snapshot"));
      throw err;
    }
    if (wasRunning) await held.start(slot);
    return result;
  }

  /** Copies the slot's data as a snapshot. The caller holds the lock and keeps the sandbox still. */
  async take(user: string, slot: Slot, reason: SnapshotReason): Promise<Snapshot> {
    const space = await this.space(user, slot);
    if (!(await space.hasData())) throw new HypervisorError("not_found", `${user}'s slot ${slot} has no data yet`, { user, slot });
    const id = newId();
    const began = Date.now();
    const { method, sizeBytes } = await space.capture(id).catch((err: unknown) => {
      throw copyFailed(err, user, slot);
    });
    const durationMs = Date.now() - began;
    crashPoint("snapshot-placed");
    const snapshot = this.store.add({ id, user, slot, generation: this.users.slot(user, slot).generationId, reason, method, sizeBytes, durationMs });
    this.log.info({ user, slot, id, reason, method, sizeBytes, durationMs }, "snapshot taken");
    await this.prune(user, slot);
    return snapshot;
  }

  /**
   * Puts a snapshot's data into the slot, keeping the data it replaces as a snapshot (`keptAs`).
   * The caller holds the lock and has stopped the slot. The space swaps the data so that a crash
   * leaves the old data or the new, never a mix; the kept snapshot is recorded, then the space
   * is told the restore is final.
   */
  async restoreInto(user: string, slot: Slot, from: Snapshot, keptAs: SnapshotReason): Promise<RestoreOutcome> {
    const space = await this.space(user, slot);
    const source = (await this.space(from.user, from.slot)).locationOf(from.id);
    const keepId = newId();
    const { method, kept: copied } = await space.replace(source, keepId).catch((err: unknown) => {
      throw copyFailed(err, user, slot);
    });
    const kept = copied ? this.record(user, slot, keepId, keptAs, copied) : undefined;
    await space.settle();
    if (kept) await this.prune(user, slot);
    this.log.info({ user, slot, restored: from.id, kept: kept?.id, method }, "snapshot restored");
    return { method, kept };
  }

  // --- internals ----------------------------------------------------------------------------

  private async locate(user: string, slot: Slot): Promise<SnapshotSpace> {
    if (!this.slotData) throw new HypervisorError("conflict", "this runtime keeps no data a snapshot could copy");
    const where = await this.slotData.locate(user, slot);
    return "space" in where ? where.space : new PathSnapshotSpace(where.paths).prepare();
  }

  /**
   * The slot's space, swept once since this start for what a crash left in it: marked swept only
   * once a sweep succeeded, so one a host's outage cut short is tried again at the next use.
   */
  private async space(user: string, slot: Slot): Promise<SnapshotSpace> {
    const space = await this.locate(user, slot);
    const k = `${user}/${slot}`;
    if (!this.recovered.has(k)) {
      await this.sweep(user, slot, space);
      this.recovered.add(k);
    }
    return space;
  }

  private async recover(user: string, slot: Slot): Promise<void> {
    await this.space(user, slot).catch((err: unknown) => {
      const code = asHypervisorError(err).code;
      // No data yet, or a host that does not answer: nothing to check now.
      if (code !== "not_found" && code !== "conflict" && code !== "runtime_unavailable") throw err;
    });
  }

  /**
   * What a crash left in a slot's space: a restore it interrupted (put right by the space; data
   * it had already swapped out is recorded as `pre-restore`), half-written copies and snapshots
   * not yet recorded (removed), records whose bytes are gone (forgotten).
   */
  private async sweep(user: string, slot: Slot, space: SnapshotSpace): Promise<void> {
    const recorded = this.store.idsOf(user, slot);
    const { present, keep } = await space.recover(recorded, newId);
    if (keep) {
      this.record(user, slot, keep.id, "pre-restore", keep);
      recorded.add(keep.id);
      this.log.warn({ user, slot, kept: keep.id }, "a restore was interrupted after it swapped the data: what it replaced is kept");
    }
    for (const name of present) {
      if (recorded.has(name)) continue;
      await space.remove(name);
      this.log.warn({ user, slot, entry: name }, "removed a snapshot a crash left half-written");
    }
    const found = new Set(present);
    for (const id of recorded) {
      if (found.has(id)) continue;
      this.store.remove(id);
      this.log.warn({ user, slot, id }, "a snapshot's data is missing; its record is removed");
    }
  }

  private record(user: string, slot: Slot, id: string, reason: SnapshotReason, copied: { method: CopyMethod; sizeBytes: number }): Snapshot {
    return this.store.add({ id, user, slot, generation: this.users.slot(user, slot).generationId, reason, ...copied, durationMs: 0 });
  }

  /**
   * At most `HYPERVISOR_SNAPSHOT_KEEP` automatic snapshots per user and slot, oldest pruned first.
   * Never pruned: manual and pinned ones, one being exported, and the user's newest pre-promote
   * snapshot (the data a rollback with data goes back to).
   */
  private async prune(user: string, slot: Slot): Promise<void> {
    const all = this.store.list(user);
    const rollbackPoint = all.find((s) => s.reason === "pre-promote")?.id;
    const automatic = all.filter((s) => s.slot === slot && s.reason !== "manual" && !s.pinned);
    const excess = automatic.length - this.config.snapshotKeep;
    if (excess <= 0) return;
    const doomed = automatic
      .reverse()
      .filter((s) => s.id !== rollbackPoint && !this.exporting.has(s.id))
      .slice(0, excess);
    for (const s of doomed) {
      await this.discard(s);
      this.log.info({ user, slot, id: s.id, reason: s.reason }, "snapshot pruned");
    }
  }

  private async discard(s: Snapshot): Promise<void> {
    await (await this.space(s.user, s.slot)).remove(s.id);
    this.store.remove(s.id);
  }
}

function newId(): string {
  return randomBytes(6).toString("hex");
}

function copyFailed(err: unknown, user: string, slot: Slot): HypervisorError {
  // The space's own verdicts (a host that does not answer, bytes that are gone) stand as they are.
  if (err instanceof HypervisorError) return err;
  const e = err as { stderr?: string; message?: string };
  return new HypervisorError(
    "internal",
    `copying ${user}'s slot ${slot} data failed: ${(e.stderr || e.message || "").trim().slice(0, 300)}`,
    { user, slot },
    { cause: err },
  );
}

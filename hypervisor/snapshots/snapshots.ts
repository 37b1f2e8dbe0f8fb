import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { lstat, readdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import type { Logger } from "pino";
import type { Config } from "../config.js";
import { crashPoint } from "../crash-points.js";
import { asHypervisorError, HypervisorError } from "../errors.js";
import type { Role, Slot } from "../../proxy/target.js";
import type { RouteController } from "../routing/route-controller.js";
import type { SlotData, SlotDataPaths } from "../runtime/slot-data.js";
import type { HeldUser, SandboxManager } from "../sandboxes/sandbox-manager.js";
import type { UserDirectory } from "../users/user-directory.js";
import type { Snapshot, SnapshotReason, SnapshotStore } from "./snapshot-store.js";
import { copyTree, privateDir, removeTree, treeSize, type CopyMethod } from "./tree-copy.js";

export type SnapshotsConfig = Pick<Config, "snapshotKeep">;

/** Where a snapshot is being written: a crash leaves it under this name, and the next start removes it. */
const TMP_PREFIX = ".tmp-";
/** A restore's copy of the snapshot, before it replaces the data. */
const INCOMING = ".incoming";
/** The data a restore replaces, between the two renames, before it is recorded as a snapshot. */
const REPLACED = ".replaced";
export const SNAPSHOT_ID = /^[0-9a-f]{12}$/;

/** What a restore did: the method of its copy, and the snapshot that keeps the data it replaced. */
export interface RestoreOutcome {
  method: CopyMethod;
  kept: Snapshot | undefined;
}

const exists = (path: string) =>
  lstat(path).then(
    () => true,
    () => false,
  );

/**
 * Snapshots of slot data (DESIGN §2a): taken while the sandbox is still, copy-on-write where the
 * file system has it, recorded last (a snapshot is first written under a temporary name, renamed
 * when complete, then recorded: anything on disk without a record is half-written and is
 * removed), pruned to `HYPERVISOR_SNAPSHOT_KEEP` automatic ones per user and slot, and never a
 * restore without the data it replaces kept as a snapshot first. Every step on a user's data
 * runs under the user's lock.
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
    const path = await this.pathOf(s);
    if (!(await exists(path))) throw new HypervisorError("not_found", `snapshot ${id}'s data is missing`, { user, id });
    this.exporting.set(id, (this.exporting.get(id) ?? 0) + 1);
    const tar = spawn("tar", ["-C", path, "--numeric-owner", "-cf", "-", "."], { stdio: ["ignore", "pipe", "ignore"] });
    const done = () => {
      const n = (this.exporting.get(id) ?? 1) - 1;
      if (n > 0) this.exporting.set(id, n);
      else this.exporting.delete(id);
    };
    tar.once("close", done);
    tar.once("error", (err) => this.log.warn({ err, user, id }, "snapshot export failed"));
    return tar.stdout;
  }

  /** The data `generation` left when the release after it was promoted: its newest pre-promote snapshot. */
  rollbackPoint(user: string, generation: number): Snapshot | undefined {
    return this.store.rollbackPoint(user, generation);
  }

  /** Removes every snapshot of a user whose data is purged: a later user of that name must never see them. */
  async purge(user: string): Promise<void> {
    for (const s of this.store.list(user)) {
      await removeTree(await this.pathOf(s).catch(() => "")).catch((err: unknown) => this.log.warn({ err, user, id: s.id }, "snapshot not removed"));
      this.store.remove(s.id);
    }
    // The slots' snapshot directories go too, with whatever a crash left in them.
    for (const slot of ["a", "b"] as const) {
      const paths = await this.slotData?.locate(user, slot).catch(() => undefined);
      if (paths)
        await rm(paths.snapshots, { recursive: true, force: true }).catch((err: unknown) =>
          this.log.warn({ err, user, slot }, "snapshot directory not removed"),
        );
      this.recovered.delete(`${user}/${slot}`);
    }
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
    const paths = await this.paths(user, slot);
    if (!(await exists(paths.data))) throw new HypervisorError("not_found", `${user}'s slot ${slot} has no data yet`, { user, slot });
    const id = newId();
    const tmp = join(paths.snapshots, TMP_PREFIX + id);
    const began = Date.now();
    let method: CopyMethod;
    try {
      method = await copyTree(paths.data, tmp);
    } catch (err) {
      await removeTree(tmp).catch(() => undefined);
      throw copyFailed(err, user, slot);
    }
    const durationMs = Date.now() - began;
    const sizeBytes = await treeSize(tmp);
    await rename(tmp, join(paths.snapshots, id));
    crashPoint("snapshot-placed");
    const snapshot = this.store.add({ id, user, slot, generation: this.users.slot(user, slot).generationId, reason, method, sizeBytes, durationMs });
    this.log.info({ user, slot, id, reason, method, sizeBytes, durationMs }, "snapshot taken");
    await this.prune(user, slot);
    return snapshot;
  }

  /**
   * Puts a snapshot's data into the slot, keeping the data it replaces as a snapshot (`keptAs`).
   * The caller holds the lock and has stopped the slot. Two renames swap the data: a crash
   * between them leaves `.replaced` and no data, which the recovery renames back.
   */
  async restoreInto(user: string, slot: Slot, from: Snapshot, keptAs: SnapshotReason): Promise<RestoreOutcome> {
    const source = await this.pathOf(from);
    const paths = await this.paths(user, slot);
    const incoming = join(paths.snapshots, INCOMING);
    await removeTree(incoming);
    let method: CopyMethod;
    try {
      method = await copyTree(source, incoming);
    } catch (err) {
      await removeTree(incoming).catch(() => undefined);
      throw copyFailed(err, user, slot);
    }
    crashPoint("restore-copied");
    const had = await exists(paths.data);
    if (had) await rename(paths.data, join(paths.snapshots, REPLACED));
    crashPoint("restore-moved-aside");
    await rename(incoming, paths.data);
    crashPoint("restore-swapped");
    const kept = had ? await this.keepReplaced(user, slot, keptAs) : undefined;
    this.log.info({ user, slot, restored: from.id, kept: kept?.id, method }, "snapshot restored");
    return { method, kept };
  }

  // --- internals ----------------------------------------------------------------------------

  private async paths(user: string, slot: Slot): Promise<SlotDataPaths> {
    if (!this.slotData) throw new HypervisorError("conflict", "this runtime keeps no data a snapshot could copy");
    const paths = await this.slotData.locate(user, slot);
    await privateDir(paths.snapshots);
    const k = `${user}/${slot}`;
    if (!this.recovered.has(k)) {
      this.recovered.add(k);
      await this.sweep(user, slot, paths);
    }
    return paths;
  }

  private async pathOf(s: Snapshot): Promise<string> {
    return join((await this.paths(s.user, s.slot)).snapshots, s.id);
  }

  private async recover(user: string, slot: Slot): Promise<void> {
    await this.paths(user, slot).catch((err: unknown) => {
      const code = asHypervisorError(err).code;
      // No data yet, or data on a remote host: nothing of ours to check here.
      if (code !== "not_found" && code !== "conflict") throw err;
    });
  }

  /**
   * What a crash left in a slot's snapshot directory: a restore between its renames (the data
   * goes back), a restore not yet recorded (what it replaced is kept), half-written copies and
   * snapshots not yet recorded (removed), records whose bytes are gone (forgotten).
   */
  private async sweep(user: string, slot: Slot, paths: SlotDataPaths): Promise<void> {
    const replaced = join(paths.snapshots, REPLACED);
    if (await exists(replaced)) {
      if (!(await exists(paths.data))) {
        await rename(replaced, paths.data);
        this.log.warn({ user, slot }, "a restore was interrupted: the data it was replacing is back");
      } else {
        const kept = await this.keepReplaced(user, slot, "pre-restore");
        this.log.warn({ user, slot, kept: kept.id }, "a restore was interrupted after it swapped the data: what it replaced is kept");
      }
    }
    const recorded = this.store.idsOf(user, slot);
    const entries = await readdir(paths.snapshots);
    for (const name of entries) {
      if (recorded.has(name)) continue;
      await removeTree(join(paths.snapshots, name));
      this.log.warn({ user, slot, entry: name }, "removed a snapshot a crash left half-written");
    }
    const present = new Set(entries);
    for (const id of recorded) {
      if (present.has(id)) continue;
      this.store.remove(id);
      this.log.warn({ user, slot, id }, "a snapshot's data is missing; its record is removed");
    }
  }

  private async keepReplaced(user: string, slot: Slot, reason: SnapshotReason): Promise<Snapshot> {
    const paths = await this.paths(user, slot);
    const id = newId();
    const path = join(paths.snapshots, id);
    await rename(join(paths.snapshots, REPLACED), path);
    crashPoint("snapshot-placed");
    const sizeBytes = await treeSize(path);
    const kept = this.store.add({ id, user, slot, generation: this.users.slot(user, slot).generationId, reason, method: "move", sizeBytes, durationMs: 0 });
    await this.prune(user, slot);
    return kept;
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
    await removeTree(await this.pathOf(s));
    this.store.remove(s.id);
  }
}

function newId(): string {
  return randomBytes(6).toString("hex");
}

function copyFailed(err: unknown, user: string, slot: Slot): HypervisorError {
  const e = err as { stderr?: string; message?: string };
  return new HypervisorError(
    "internal",
    `copying ${user}'s slot ${slot} data failed: ${(e.stderr || e.message || "").trim().slice(0, 300)}`,
    { user, slot },
    { cause: err },
  );
}

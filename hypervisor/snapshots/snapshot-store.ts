import type { Db } from "../db/database.js";
import type { Slot } from "../../proxy/target.js";
import type { CopyMethod } from "./tree-copy.js";

/** Why a snapshot was taken (DESIGN §2a); every reason but `manual` is automatic. */
export type SnapshotReason = "manual" | "pre-promote" | "pre-rollback" | "pre-restore" | "fork";

export interface Snapshot {
  id: string;
  user: string;
  /** The slot whose data it is a copy of. */
  slot: Slot;
  /** The generation that wrote the data. */
  generation: number;
  reason: SnapshotReason;
  method: CopyMethod;
  sizeBytes: number;
  /** How long the copy took (the sandbox was still meanwhile). */
  durationMs: number;
  pinned: boolean;
  /** ISO 8601. */
  createdAt: string;
}

interface Row {
  id: string;
  user: string;
  slot: Slot;
  generation_id: number;
  reason: SnapshotReason;
  method: CopyMethod;
  size_bytes: number;
  duration_ms: number;
  pinned: number;
  created_at: number;
}

const toSnapshot = (r: Row): Snapshot => ({
  id: r.id,
  user: r.user,
  slot: r.slot,
  generation: r.generation_id,
  reason: r.reason,
  method: r.method,
  sizeBytes: r.size_bytes,
  durationMs: r.duration_ms,
  pinned: r.pinned === 1,
  createdAt: new Date(r.created_at).toISOString(),
});

/** The snapshots' records in SQLite; the bytes are the Snapshots service's. */
export class SnapshotStore {
  constructor(
    private readonly db: Db,
    private readonly now: () => number = Date.now,
  ) {}

  /** A user's snapshots, newest first. */
  list(user: string): Snapshot[] {
    return (this.db.prepare("SELECT * FROM snapshots WHERE user = ? ORDER BY created_at DESC, rowid DESC").all(user) as Row[]).map(toSnapshot);
  }

  /** Every user's snapshots of one slot directory, for the recovery sweep. */
  idsOf(user: string, slot: Slot): Set<string> {
    return new Set((this.db.prepare("SELECT id FROM snapshots WHERE user = ? AND slot = ?").all(user, slot) as { id: string }[]).map((r) => r.id));
  }

  /** The users and slots that have any snapshot. */
  slots(): { user: string; slot: Slot }[] {
    return this.db.prepare("SELECT DISTINCT user, slot FROM snapshots").all() as { user: string; slot: Slot }[];
  }

  /** The snapshot with this id, only if it is this user's: another user's is as absent as a missing one. */
  get(user: string, id: string): Snapshot | undefined {
    const row = this.db.prepare("SELECT * FROM snapshots WHERE id = ? AND user = ?").get(id, user) as Row | undefined;
    return row ? toSnapshot(row) : undefined;
  }

  add(s: Omit<Snapshot, "pinned" | "createdAt">): Snapshot {
    const at = this.now();
    this.db
      .prepare(
        `INSERT INTO snapshots (id, user, slot, generation_id, reason, method, size_bytes, duration_ms, pinned, created_at)
         VALUES (@id, @user, @slot, @generation, @reason, @method, @sizeBytes, @durationMs, 0, @at)`,
      )
      .run({ ...s, at });
    return { ...s, pinned: false, createdAt: new Date(at).toISOString() };
  }

  setPinned(user: string, id: string, pinned: boolean): void {
    this.db.prepare("UPDATE snapshots SET pinned = ? WHERE id = ? AND user = ?").run(pinned ? 1 : 0, id, user);
  }

  remove(id: string): void {
    this.db.prepare("DELETE FROM snapshots WHERE id = ?").run(id);
  }

  /**
   * The newest pre-promote snapshot of a user taken while `generation` was live: the data that
   * generation left when the release after it was promoted (rollback with data's target).
   */
  rollbackPoint(user: string, generation: number): Snapshot | undefined {
    const row = this.db
      .prepare("SELECT * FROM snapshots WHERE user = ? AND generation_id = ? AND reason = 'pre-promote' ORDER BY created_at DESC, rowid DESC LIMIT 1")
      .get(user, generation) as Row | undefined;
    return row ? toSnapshot(row) : undefined;
  }
}

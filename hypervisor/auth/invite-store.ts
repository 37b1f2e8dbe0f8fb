import { createHash, randomBytes } from "node:crypto";
import type { Db } from "../db/database.js";
import { HypervisorError } from "../errors.js";

export type InviteState = "unused" | "used" | "expired";

export interface Invite {
  id: number;
  createdBy: string;
  createdAt: number;
  expiresAt: number;
  state: InviteState;
  usedAt: number | null;
  usedBy: string | null;
}

interface InviteRow {
  id: number;
  created_by: string;
  created_at: number;
  expires_at: number;
  used_at: number | null;
  used_by: string | null;
}

export const DEFAULT_INVITE_TTL_MS = 7 * 24 * 60 * 60 * 1000;

/**
 * A code is 128 random bits, so a fast hash is enough to make a copy of the table useless
 * (no dictionary to try); argon2 is for the low-entropy secrets people type.
 */
function hashCode(code: string): string {
  return createHash("sha256").update(code).digest("hex");
}

/** Single-use invite codes for HYPERVISOR_REGISTRATION=invite, stored hashed. */
export class InviteStore {
  constructor(
    private readonly db: Db,
    private readonly now: () => number = Date.now,
  ) {}

  create(createdBy: string, ttlMs = DEFAULT_INVITE_TTL_MS): { id: number; code: string; expiresAt: number } {
    const code = randomBytes(16).toString("base64url");
    const at = this.now();
    const expiresAt = at + ttlMs;
    const { lastInsertRowid } = this.db
      .prepare("INSERT INTO invites (code_hash, created_by, created_at, expires_at) VALUES (?, ?, ?, ?)")
      .run(hashCode(code), createdBy, at, expiresAt);
    return { id: Number(lastInsertRowid), code, expiresAt };
  }

  list(): Invite[] {
    const at = this.now();
    const rows = this.db.prepare("SELECT id, created_by, created_at, expires_at, used_at, used_by FROM invites ORDER BY id").all() as InviteRow[];
    return rows.map((r) => ({
      id: r.id,
      createdBy: r.created_by,
      createdAt: r.created_at,
      expiresAt: r.expires_at,
      state: r.used_at !== null ? "used" : r.expires_at <= at ? "expired" : "unused",
      usedAt: r.used_at,
      usedBy: r.used_by,
    }));
  }

  /** The id of an unused, unexpired invite with this code. */
  find(code: string): number | undefined {
    const row = this.db.prepare("SELECT id FROM invites WHERE code_hash = ? AND used_at IS NULL AND expires_at > ?").get(hashCode(code), this.now()) as
      { id: number } | undefined;
    return row?.id;
  }

  /** Marks the invite used by `user`; throws if it was used or expired meanwhile. */
  consume(id: number, user: string): void {
    const { changes } = this.db
      .prepare("UPDATE invites SET used_at = ?, used_by = ? WHERE id = ? AND used_at IS NULL AND expires_at > ?")
      .run(this.now(), user, id, this.now());
    if (changes !== 1) throw new HypervisorError("forbidden", "the invite code is not valid (unknown, used or expired)");
  }
}

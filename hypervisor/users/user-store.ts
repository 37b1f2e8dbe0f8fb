import type { Db } from "../db/database.js";
import { HypervisorError } from "../errors.js";
import type { Role, Slot } from "../../proxy/target.js";

export interface SlotRecord {
  user: string;
  slot: Slot;
  generationId: number;
  generationSince: number;
  lastStartedAt: number | null;
  lastStoppedAt: number | null;
}

/** A slot, its role and what it runs: where each generation is, for the generation list. */
export interface SlotAssignment {
  user: string;
  slot: Slot;
  role: Role;
  generationId: number;
  since: number;
  roleSince: number;
}

/** A user removed with its data kept: the name is reserved until the data is purged. */
export interface RemovedUser {
  name: string;
  removedAt: number;
  /** The Podman host that kept the data; null on a single-host runtime. */
  host: string | null;
}

export interface UserRecord {
  name: string;
  createdAt: number;
  disabledAt: number | null;
}

/**
 * Users and what each of their slots runs, as SQLite holds them. A new user is written with its
 * first route (live on slot a) in the same transaction; after that only the route store writes
 * the route.
 */
/** The refusal for a name a removed user's kept data still holds. */
export function reserved(name: string): HypervisorError {
  return new HypervisorError(
    "conflict",
    `the name ${name} belonged to a removed user whose data is kept, so it is reserved until an operator purges that data (hypervisorctl users purge ${name})`,
    { user: name },
  );
}

export class UserStore {
  constructor(
    private readonly db: Db,
    private readonly now: () => number = Date.now,
  ) {}

  createUser(name: string, generationId: number): void {
    const at = this.now();
    this.db.transaction(() => {
      if (this.db.prepare("SELECT 1 FROM users WHERE name = ?").get(name)) {
        throw new HypervisorError("conflict", `user ${name} already exists`, { user: name });
      }
      if (this.db.prepare("SELECT 1 FROM removed_users WHERE name = ?").get(name)) throw reserved(name);
      this.db.prepare("INSERT INTO users (name, created_at) VALUES (?, ?)").run(name, at);
      this.db.prepare("INSERT INTO routes (user, live_slot, version, updated_at) VALUES (?, 'a', 0, ?)").run(name, at);
      const slot = this.db.prepare("INSERT INTO sandboxes (user, slot, generation_id, generation_since) VALUES (?, ?, ?, ?)");
      slot.run(name, "a", generationId, at);
      slot.run(name, "b", generationId, at);
    })();
  }

  hasUser(name: string): boolean {
    return this.db.prepare("SELECT 1 FROM users WHERE name = ?").get(name) !== undefined;
  }

  users(): string[] {
    return (this.db.prepare("SELECT name FROM users ORDER BY name").all() as { name: string }[]).map((r) => r.name);
  }

  userRecords(): UserRecord[] {
    const rows = this.db.prepare("SELECT name, created_at, disabled_at FROM users ORDER BY name").all() as {
      name: string;
      created_at: number;
      disabled_at: number | null;
    }[];
    return rows.map((r) => ({ name: r.name, createdAt: r.created_at, disabledAt: r.disabled_at }));
  }

  /** Disables (or, with null, enables) a user; disabling twice keeps the first time. */
  setDisabled(name: string, disabled: boolean): void {
    this.db
      .prepare("UPDATE users SET disabled_at = CASE WHEN ? THEN COALESCE(disabled_at, ?) ELSE NULL END WHERE name = ?")
      .run(disabled ? 1 : 0, this.now(), name);
  }

  /**
   * Deletes the user and every row that names it, in one transaction: its route, slots, passkey
   * account, recovery codes, sessions and its own egress keys. Invites it used keep its name, as history; its host
   * placement goes first, through the fleet, which holds it in memory too. With `keptData` the
   * name is reserved in the same transaction, so no registration can take it in between.
   */
  removeUser(name: string, keptData: { host: string | null } | undefined): void {
    this.db.transaction(() => {
      for (const table of ["sessions", "recovery_codes", "passkeys", "accounts", "egress_user_keys", "sandboxes", "routes"]) {
        this.db.prepare(`DELETE FROM ${table} WHERE user = ?`).run(name);
      }
      this.db.prepare("DELETE FROM users WHERE name = ?").run(name);
      if (keptData) {
        this.db
          .prepare(
            "INSERT INTO removed_users (name, removed_at, host) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET removed_at = excluded.removed_at, host = excluded.host",
          )
          .run(name, this.now(), keptData.host);
      }
    })();
  }

  removedUser(name: string): RemovedUser | undefined {
    const row = this.db.prepare("SELECT removed_at, host FROM removed_users WHERE name = ?").get(name) as
      { removed_at: number; host: string | null } | undefined;
    return row && { name, removedAt: row.removed_at, host: row.host };
  }

  /** Frees a reserved name: its data has been purged. */
  forgetRemoved(name: string): void {
    this.db.prepare("DELETE FROM removed_users WHERE name = ?").run(name);
  }

  slot(user: string, slot: Slot): SlotRecord | undefined {
    const row = this.db
      .prepare("SELECT generation_id, generation_since, last_started_at, last_stopped_at FROM sandboxes WHERE user = ? AND slot = ?")
      .get(user, slot) as { generation_id: number; generation_since: number; last_started_at: number | null; last_stopped_at: number | null } | undefined;
    return (
      row && {
        user,
        slot,
        generationId: row.generation_id,
        generationSince: row.generation_since,
        lastStartedAt: row.last_started_at,
        lastStoppedAt: row.last_stopped_at,
      }
    );
  }

  setSlotGeneration(user: string, slot: Slot, generationId: number): void {
    this.db.prepare("UPDATE sandboxes SET generation_id = ?, generation_since = ? WHERE user = ? AND slot = ?").run(generationId, this.now(), user, slot);
  }

  /** Where each generation runs now, for the generation list. */
  assignments(): SlotAssignment[] {
    const rows = this.db
      .prepare(
        "SELECT s.user, s.slot, s.generation_id, s.generation_since, r.live_slot, r.updated_at FROM sandboxes s JOIN routes r ON r.user = s.user ORDER BY s.user, s.slot",
      )
      .all() as { user: string; slot: Slot; generation_id: number; generation_since: number; live_slot: Slot; updated_at: number }[];
    return rows.map((r) => ({
      user: r.user,
      slot: r.slot,
      role: r.slot === r.live_slot ? "live" : "dev",
      generationId: r.generation_id,
      since: r.generation_since,
      // In its current role since the later of: the slot got this generation, the last flip.
      roleSince: Math.max(r.generation_since, r.updated_at),
    }));
  }

  markStarted(user: string, slot: Slot): void {
    this.db.prepare("UPDATE sandboxes SET last_started_at = ? WHERE user = ? AND slot = ?").run(this.now(), user, slot);
  }

  markStopped(user: string, slot: Slot): void {
    this.db.prepare("UPDATE sandboxes SET last_stopped_at = ? WHERE user = ? AND slot = ?").run(this.now(), user, slot);
  }
}

import type { Db } from "../db/database.js";
import { HypervisorError } from "../errors.js";

/** What an operator sets of a host; `unreachable` is never stored, it is what the health check sees. */
export type HostAdminState = "ready" | "cordoned" | "draining";

export interface HostRecord {
  name: string;
  url: string;
  address: string;
  capacity: number;
  state: HostAdminState;
}

interface HostRow {
  name: string;
  url: string;
  address: string;
  capacity: number;
  state: HostAdminState;
}

/** Hosts and the placement of each user on one of them, as SQLite holds them (DESIGN §8a). */
export class HostStore {
  constructor(
    private readonly db: Db,
    private readonly now: () => number = Date.now,
  ) {}

  hosts(): HostRecord[] {
    return this.db.prepare("SELECT name, url, address, capacity, state FROM hosts WHERE removed_at IS NULL ORDER BY name").all() as HostRow[];
  }

  /** Whether a host of this name was ever registered, removed ones included. */
  known(name: string): boolean {
    return this.db.prepare("SELECT 1 FROM hosts WHERE name = ?").get(name) !== undefined;
  }

  /** Registers a host, or registers again one that was removed (under its new settings). */
  add(host: Omit<HostRecord, "state">): HostRecord {
    const add = this.db.transaction(() => {
      const row = this.db.prepare("SELECT removed_at FROM hosts WHERE name = ?").get(host.name) as { removed_at: number | null } | undefined;
      if (row && row.removed_at === null) throw new HypervisorError("conflict", `host ${host.name} already exists`, { host: host.name });
      const clash = this.db.prepare("SELECT name FROM hosts WHERE url = ? AND removed_at IS NULL").get(host.url) as { name: string } | undefined;
      if (clash) throw new HypervisorError("conflict", `host ${clash.name} already has the URL ${host.url}`, { host: clash.name });
      this.db
        .prepare(
          `INSERT INTO hosts (name, url, address, capacity, state, created_at) VALUES (@name, @url, @address, @capacity, 'ready', @at)
           ON CONFLICT (name) DO UPDATE SET url = @url, address = @address, capacity = @capacity, state = 'ready', created_at = @at, removed_at = NULL`,
        )
        .run({ ...host, at: this.now() });
    });
    add();
    return { ...host, state: "ready" };
  }

  setState(name: string, state: HostAdminState): void {
    this.db.prepare("UPDATE hosts SET state = ? WHERE name = ? AND removed_at IS NULL").run(state, name);
  }

  /** Removes a host no user is placed on; the check and the write are one transaction. */
  remove(name: string): void {
    const remove = this.db.transaction(() => {
      const users = this.usersOn(name);
      if (users.length) {
        throw new HypervisorError("conflict", `host ${name} still holds ${users.length} user(s); drain it first`, { host: name, users: users.slice(0, 20) });
      }
      this.db.prepare("UPDATE hosts SET removed_at = ? WHERE name = ? AND removed_at IS NULL").run(this.now(), name);
    });
    remove();
  }

  placements(): Map<string, string> {
    const rows = this.db.prepare("SELECT user, host FROM placements").all() as { user: string; host: string }[];
    return new Map(rows.map((r) => [r.user, r.host]));
  }

  usersOn(host: string): string[] {
    return (this.db.prepare("SELECT user FROM placements WHERE host = ? ORDER BY user").all(host) as { user: string }[]).map((r) => r.user);
  }

  unplace(user: string): void {
    this.db.prepare("DELETE FROM placements WHERE user = ?").run(user);
  }

  place(user: string, host: string): void {
    this.db
      .prepare(
        "INSERT INTO placements (user, host, placed_at) VALUES (?, ?, ?) ON CONFLICT (user) DO UPDATE SET host = excluded.host, placed_at = excluded.placed_at",
      )
      .run(user, host, this.now());
  }
}

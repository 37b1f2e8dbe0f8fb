import type { Statement } from "better-sqlite3";
import type { Db } from "../db/database.js";
import { HypervisorError } from "../errors.js";
import type { Slot } from "../../proxy/target.js";

export interface Route {
  user: string;
  live: Slot;
  dev: Slot;
  version: number;
}

const other = (slot: Slot): Slot => (slot === "a" ? "b" : "a");

/**
 * The route table (live/dev → slot) as SQLite holds it. A user's first route is written with
 * the user (UserStore); every change after that is a flip here, and the route controller is
 * this store's one caller.
 */
export class RouteStore {
  /** Prepared once: a fleet-wide swap runs it for every user. */
  private readonly flipStatement: Statement;

  constructor(
    private readonly db: Db,
    private readonly now: () => number = Date.now,
  ) {
    this.flipStatement = db.prepare(
      "UPDATE routes SET live_slot = CASE live_slot WHEN 'a' THEN 'b' ELSE 'a' END, version = version + 1, updated_at = ? WHERE user = ? AND version = ? RETURNING live_slot, version",
    );
  }

  route(user: string): Route | undefined {
    const row = this.db.prepare("SELECT live_slot, version FROM routes WHERE user = ?").get(user) as { live_slot: Slot; version: number } | undefined;
    return row && { user, live: row.live_slot, dev: other(row.live_slot), version: row.version };
  }

  /**
   * Exchanges live and dev for one user: a single-row write, so a crash leaves the old or the
   * new mapping and never a mix. `expectedVersion` refuses a flip based on a stale read.
   */
  flip(user: string, expectedVersion: number): Route {
    const row = this.flipStatement.get(this.now(), user, expectedVersion) as { live_slot: Slot; version: number } | undefined;
    if (!row) throw new HypervisorError("conflict", `the route of ${user} changed meanwhile; try again`, { user });
    return { user, live: row.live_slot, dev: other(row.live_slot), version: row.version };
  }

  /** Runs fn in one transaction: all of its writes are durable together, or none is. */
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }
}

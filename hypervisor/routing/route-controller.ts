import { RouteTable, type RouteEntry } from "../../proxy/route-table.js";
import type { Role, RouteSource, Slot } from "../../proxy/target.js";
import { HypervisorError } from "../errors.js";
import type { UserDirectory } from "../users/user-directory.js";
import type { RouteStore } from "./route-store.js";

export type RouteChangeListener = (user: string, replaced: RouteEntry, installed: RouteEntry) => void;

interface PendingFlip {
  user: string;
  guard: () => void;
  resolve(flipped: { replaced: RouteEntry; installed: RouteEntry }): void;
  reject(err: unknown): void;
}

/**
 * The one owner of routing: the only writer of the in-memory route table the proxy reads and the
 * only caller of the route store. Its callers hold the user's lock (the user directory's) for a
 * flip; everything is persisted before it is installed, so the table never shows a mapping
 * SQLite does not hold.
 */
export class RouteController implements RouteSource {
  private readonly table = new RouteTable();
  private readonly listeners: RouteChangeListener[] = [];
  private readonly replacedListeners: ((user: string, slot: Slot) => void)[] = [];
  private readonly pendingFlips: PendingFlip[] = [];

  constructor(
    private readonly store: RouteStore,
    /** What each slot runs, to tell the generation a role runs. */
    private readonly users: Pick<UserDirectory, "slot">,
  ) {}

  /**
   * Served from the in-memory table; a user created since (by registration) is loaded from
   * SQLite once. Unknown users are not cached, so probing names costs a lookup, not memory.
   */
  route(user: string): RouteEntry {
    let entry = this.table.get(user);
    if (!entry) {
      const route = this.store.route(user);
      if (!route) throw new HypervisorError("not_found", `no user ${user} (hypervisorctl users list)`, { user });
      entry = { live: route.live, dev: route.dev, version: route.version };
      this.table.install(user, entry);
    }
    return entry;
  }

  slotOf(user: string, role: Role): Slot {
    return this.route(user)[role];
  }

  onRouteChange(listener: RouteChangeListener): void {
    this.listeners.push(listener);
  }

  onSlotReplaced(listener: (user: string, slot: Slot) => void): void {
    this.replacedListeners.push(listener);
  }

  /** Tells the data plane a slot's sandbox is being replaced in place (a promote): its WebSockets close with 1012. */
  slotReplaced(user: string, slot: Slot): void {
    for (const listener of this.replacedListeners) listener(user, slot);
  }

  /**
   * Exchanges live and dev: persisted first (one row, atomic), then installed in the table the
   * proxy reads, so an acknowledged flip survives a crash and no request sees a mapping SQLite
   * lacks. Call with the user's lock held. `guard` runs just before the write, synchronously
   * with it, and refuses this user's flip (nothing written) by throwing.
   *
   * Flips asked for in one turn of the event loop are committed together, in one transaction:
   * a fleet-wide swap then syncs the disk once per batch instead of once per user, the cost
   * that dominated it. A user's flip still resolves only after its row is durable, and a
   * refused flip fails alone.
   */
  flip(user: string, guard: () => void = () => {}): Promise<{ replaced: RouteEntry; installed: RouteEntry }> {
    return new Promise((resolve, reject) => {
      if (this.pendingFlips.push({ user, guard, resolve, reject }) === 1) setImmediate(() => this.commitFlips());
    });
  }

  private commitFlips(): void {
    const batch = this.pendingFlips.splice(0);
    const written: (RouteEntry | { refused: unknown })[] = [];
    try {
      this.store.transaction(() => {
        for (const { user, guard } of batch) {
          try {
            guard();
            const flipped = this.store.flip(user, this.route(user).version);
            written.push({ live: flipped.live, dev: flipped.dev, version: flipped.version });
          } catch (refused) {
            written.push({ refused });
          }
        }
      });
    } catch (err) {
      // The commit failed: no row of the batch is durable, so none is installed.
      for (const pending of batch) pending.reject(err);
      return;
    }
    batch.forEach(({ user, resolve, reject }, i) => {
      const outcome = written[i]!;
      if ("refused" in outcome) return reject(outcome.refused);
      const replaced = this.table.install(user, outcome)!;
      try {
        for (const listener of this.listeners) listener(user, replaced, outcome);
        resolve({ replaced, installed: outcome });
      } catch (err) {
        reject(err);
      }
    });
  }

  /** Drops a removed user's route from the table the proxy reads; its rows went with the user. */
  forget(user: string): void {
    this.table.remove(user);
  }

  /** The generation a role runs now. */
  generationOf(user: string, role: Role): number {
    return this.users.slot(user, this.slotOf(user, role)).generationId;
  }
}

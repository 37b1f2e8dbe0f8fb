import type { Role, Slot } from "./target.js";

export interface RouteEntry {
  live: Slot;
  dev: Slot;
  version: number;
}

/**
 * The in-memory route table the data plane reads on every request: (user, role) → slot.
 * Pure and side-effect free; the sandbox manager is its one writer and persists before it
 * installs, so the table never shows a mapping SQLite does not hold.
 */
export class RouteTable {
  private readonly routes = new Map<string, RouteEntry>();

  get(user: string): RouteEntry | undefined {
    return this.routes.get(user);
  }

  slotOf(user: string, role: Role): Slot | undefined {
    return this.routes.get(user)?.[role];
  }

  /** Installs a user's mapping and returns the one it replaced. */
  install(user: string, entry: RouteEntry): RouteEntry | undefined {
    const replaced = this.routes.get(user);
    this.routes.set(user, entry);
    return replaced;
  }

  /** Forgets a user that no longer exists. */
  remove(user: string): void {
    this.routes.delete(user);
  }

  size(): number {
    return this.routes.size;
  }
}

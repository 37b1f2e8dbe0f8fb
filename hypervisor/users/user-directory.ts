import { HypervisorError } from "../errors.js";
import type { Slot } from "../../proxy/target.js";
import type { RemovedUser, SlotAssignment, SlotRecord, UserRecord, UserStore } from "./user-store.js";

/**
 * The users: who exists, whether disabled, what each of their two slots runs, and the per-user
 * lock that serialises every multi-step change of one user (releases, moves, removal). Routing
 * (which slot is live) is the route controller's.
 */
export class UserDirectory {
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(
    private readonly store: UserStore,
    /** The generation a new user's slots start with, resolved before the user is written. */
    private readonly initialGeneration: () => Promise<number>,
  ) {}

  /**
   * Runs fn with the user's lock held: swaps, rollbacks, deploys, moves and the removal of one
   * user never interleave. Different users proceed in parallel.
   */
  async withUserLock<T>(user: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(user) ?? Promise.resolve();
    const run = previous.then(fn, fn);
    const settled = run.catch(() => undefined);
    this.locks.set(user, settled);
    try {
      return await run;
    } finally {
      if (this.locks.get(user) === settled) this.locks.delete(user);
    }
  }

  /**
   * A new user with both slots on the initial generation (live on slot a). The generation is
   * resolved first and the returned function writes synchronously, so a caller can make the user
   * part of its own transaction (registration creates the account and passkey with it).
   */
  async prepareUser(): Promise<(name: string) => void> {
    const generationId = await this.initialGeneration();
    return (name) => this.store.createUser(name, generationId);
  }

  hasUser(name: string): boolean {
    return this.store.hasUser(name);
  }

  users(): string[] {
    return this.store.users();
  }

  userRecords(): UserRecord[] {
    return this.store.userRecords();
  }

  /** The user's record; not_found for a name that is no user. */
  record(name: string): UserRecord {
    const record = this.store.userRecords().find((u) => u.name === name);
    if (!record) throw unknownUser(name);
    return record;
  }

  setDisabled(user: string, disabled: boolean): void {
    this.require(user);
    this.store.setDisabled(user, disabled);
  }

  /**
   * Deletes the user's rows. Call with the user's lock held, after its sandboxes and placement
   * went. With `keptData` (where its data stays) the name stays reserved until `forgetRemoved`.
   */
  remove(user: string, keptData: { host: string | null } | undefined): void {
    this.require(user);
    this.store.removeUser(user, keptData);
  }

  /** A user removed with its data kept; undefined for any other name. */
  removedUser(name: string): RemovedUser | undefined {
    return this.store.removedUser(name);
  }

  /** Frees the name of a removed user whose data has been purged. */
  forgetRemoved(name: string): void {
    this.store.forgetRemoved(name);
  }

  /** The unknown names among `users` fail the whole call; no names means every user. */
  resolveUsers(users: string[] | undefined): string[] {
    if (!users) return this.users();
    const unknown = users.filter((u) => !this.hasUser(u));
    if (unknown.length) throw new HypervisorError("not_found", `no user ${unknown.join(", ")} (hypervisorctl users list)`, { users: unknown });
    return [...new Set(users)];
  }

  slot(user: string, slot: Slot): SlotRecord {
    const record = this.store.slot(user, slot);
    if (!record) throw unknownUser(user);
    return record;
  }

  setSlotGeneration(user: string, slot: Slot, generationId: number): void {
    this.store.setSlotGeneration(user, slot, generationId);
  }

  assignments(): SlotAssignment[] {
    return this.store.assignments();
  }

  markStarted(user: string, slot: Slot): void {
    this.store.markStarted(user, slot);
  }

  markStopped(user: string, slot: Slot): void {
    this.store.markStopped(user, slot);
  }

  private require(user: string): void {
    if (!this.store.hasUser(user)) throw unknownUser(user);
  }
}

export function unknownUser(user: string): HypervisorError {
  return new HypervisorError("not_found", `no user ${user} (hypervisorctl users list)`, { user });
}

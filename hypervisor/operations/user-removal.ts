import type { Logger } from "pino";
import type { SessionStore } from "../auth/session-store.js";
import { HypervisorError } from "../errors.js";
import type { HostFleet } from "../hosts/host-fleet.js";
import type { RouteController } from "../routing/route-controller.js";
import type { SandboxManager } from "../sandboxes/sandbox-manager.js";
import type { UserDirectory } from "../users/user-directory.js";

export interface UserRemoved {
  name: string;
  removed: true;
  purged: boolean;
}

export interface UserPurged {
  name: string;
  purged: true;
}

/**
 * Removing a user: sign-in refused and sessions ended first, then its sandboxes (and with
 * `purge` its data, on every host) go, then its rows and its route. A failure on the way undoes
 * what can be undone (the user stays, enabled again if it was), so the call can be repeated.
 * Data kept by a removal keeps the name reserved, so a new account of that name is never handed
 * it, until `purge` deletes the data.
 */
export class UserRemoval {
  constructor(
    private readonly users: UserDirectory,
    private readonly routing: RouteController,
    private readonly sessions: Pick<SessionStore, "revokeUser">,
    private readonly manager: SandboxManager,
    private readonly fleet: HostFleet | undefined,
    private readonly log: Logger,
    /** The snapshots of the user's data (DESIGN §2a): purged with the data, before its volumes go. */
    private readonly snapshots?: { purge(user: string): Promise<void> },
  ) {}

  async remove(user: string, { purge }: { purge: boolean }): Promise<UserRemoved> {
    return this.users.withUserLock(user, async () => {
      const wasDisabled = this.users.record(user).disabledAt !== null;
      // Refused before anything changes: a host that does not answer may hold the user's data.
      if (purge) this.fleet?.requireAllReachable(user);
      // Sign-in is refused from here on, so no session outlives the removal.
      this.users.setDisabled(user, true);
      this.sessions.revokeUser(user);
      const host = this.fleet?.hostOf(user) ?? null;
      try {
        if (purge) await this.snapshots?.purge(user);
        await this.manager.removeSandboxes(user, { removeData: purge });
        // Whatever an earlier move left on another host goes too.
        if (purge) await this.fleet?.discardEverywhere(user);
      } catch (err) {
        // The user stays as it was (its sessions ended), so the call can simply be repeated.
        if (!wasDisabled) this.users.setDisabled(user, false);
        throw err;
      }
      // Kept data stays on the host it was on; the placement goes with the user's rows.
      this.fleet?.unplace(user);
      this.users.remove(user, purge ? undefined : { host });
      this.routing.forget(user);
      this.log.info({ user, purge, host }, "user removed");
      return { name: user, removed: true as const, purged: purge };
    });
  }

  /** Deletes the data a removal kept, on every runtime and host, and frees the name. */
  async purge(name: string): Promise<UserPurged> {
    return this.users.withUserLock(name, async () => {
      if (this.users.hasUser(name)) {
        throw new HypervisorError("conflict", `user ${name} exists: remove it with its data (hypervisorctl users remove ${name} --purge)`, { user: name });
      }
      const removed = this.users.removedUser(name);
      if (!removed) throw new HypervisorError("not_found", `no removed user ${name} whose data is kept (hypervisorctl users list)`, { user: name });
      await this.snapshots?.purge(name);
      if (this.fleet) await this.fleet.discardEverywhere(name);
      else await this.manager.removeSandboxes(name, { removeData: true });
      this.users.forgetRemoved(name);
      this.log.info({ user: name, host: removed.host }, "removed user's data purged");
      return { name, purged: true as const };
    });
  }
}

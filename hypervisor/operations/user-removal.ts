import type { Logger } from "pino";
import type { SessionStore } from "../auth/session-store.js";
import type { HostFleet } from "../hosts/host-fleet.js";
import type { RouteController } from "../routing/route-controller.js";
import type { SandboxManager } from "../sandboxes/sandbox-manager.js";
import type { UserDirectory } from "../users/user-directory.js";

export interface UserRemoved {
  name: string;
  removed: true;
  purged: boolean;
}

/**
 * Removing a user: sign-in refused and sessions ended first, then its sandboxes (and with
 * `purge` its data) go, then its rows and its route. A failure on the way undoes what can be
 * undone (the user stays, enabled again if it was), so the call can simply be repeated.
 */
export class UserRemoval {
  constructor(
    private readonly users: UserDirectory,
    private readonly routing: RouteController,
    private readonly sessions: Pick<SessionStore, "revokeUser">,
    private readonly manager: SandboxManager,
    private readonly fleet: HostFleet | undefined,
    private readonly log: Logger,
  ) {}

  async remove(user: string, { purge }: { purge: boolean }): Promise<UserRemoved> {
    return this.users.withUserLock(user, async () => {
      const wasDisabled = this.users.record(user).disabledAt !== null;
      // Sign-in is refused from here on, so no session outlives the removal.
      this.users.setDisabled(user, true);
      this.sessions.revokeUser(user);
      const host = this.fleet?.hostOf(user) ?? null;
      try {
        await this.manager.removeSandboxes(user, { removeData: purge });
      } catch (err) {
        // The user stays as it was (its sessions ended), so the call can simply be repeated.
        if (!wasDisabled) this.users.setDisabled(user, false);
        throw err;
      }
      // Kept data stays on the host it was on; the placement goes with the user's rows.
      this.fleet?.unplace(user);
      this.users.remove(user);
      this.routing.forget(user);
      this.log.info({ user, purge, host }, "user removed");
      return { name: user, removed: true as const, purged: purge };
    });
  }
}

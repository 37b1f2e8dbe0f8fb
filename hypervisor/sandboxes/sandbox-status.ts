import type { HealthProbe, ContainerRuntime } from "../runtime/container-runtime.js";
import { ROLES, type Endpoint, type Role, type Slot } from "../../proxy/target.js";
import type { RouteController } from "../routing/route-controller.js";
import type { UserDirectory } from "../users/user-directory.js";
import type { SandboxManager } from "./sandbox-manager.js";

export interface SandboxStatus {
  user: string;
  role: Role;
  slot: Slot;
  generation: number;
  /**
   * `not started`: the slot has no sandbox yet (never started, or its generation changed since).
   * `frozen`: idle, its memory kept and no CPU; the next request thaws it (DESIGN §8b).
   */
  state: "running" | "frozen" | "starting" | "stopped" | "not started";
  /** One probe of a running sandbox; null when it does not run or is frozen (it answers nothing until thawed). */
  health: "healthy" | "unhealthy" | null;
  endpoint: Endpoint | null;
  startedAt: string | null;
  /** How its disk holds, where the runtime says (process: `btrfs qgroup` or `measured`). */
  disk?: string;
  /** Stopped over its disk: the message its user and the operator see. */
  overDisk?: string;
}

const key = (user: string, slot: Slot) => `${user}/${slot}`;

/** What each role of each user runs now, as the runtime lists it and one health probe finds it. */
export class SandboxStatusView {
  constructor(
    private readonly runtime: ContainerRuntime,
    private readonly health: HealthProbe,
    private readonly users: UserDirectory,
    private readonly routing: RouteController,
    private readonly manager: Pick<SandboxManager, "isStarting">,
  ) {}

  async status(users = this.users.users()): Promise<SandboxStatus[]> {
    const infos = new Map((await this.runtime.list()).map((i) => [key(i.user, i.slot), i]));
    const pending: Array<Promise<SandboxStatus>> = [];
    for (const user of users) {
      const route = this.routing.route(user);
      for (const role of ROLES) {
        const slot = route[role];
        const info = infos.get(key(user, slot));
        const record = this.users.slot(user, slot);
        const state = this.manager.isStarting(user, slot) ? "starting" : !info ? "not started" : !info.running ? "stopped" : info.frozen ? "frozen" : "running";
        const endpoint = info?.endpoint ?? null;
        // Probed together, so a listing costs one probe's time, not one per sandbox.
        pending.push(
          (async () => ({
            user,
            role,
            slot,
            generation: record.generationId,
            state,
            health: state === "running" && endpoint ? ((await this.health.probe(endpoint)) ? "healthy" : "unhealthy") : null,
            endpoint,
            startedAt: info?.startedAt ?? null,
            ...(info?.disk ? { disk: info.disk } : {}),
            ...(state === "stopped" && info?.overDisk ? { overDisk: info.overDisk } : {}),
          }))(),
        );
      }
    }
    return Promise.all(pending);
  }
}

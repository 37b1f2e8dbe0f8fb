import type { Logger } from "pino";
import { asHypervisorError, HypervisorError } from "../errors.js";
import type { GenerationStore } from "../generations/generation-store.js";
import type { HostFleet } from "../hosts/host-fleet.js";
import type { SandboxManager } from "../sandboxes/sandbox-manager.js";
import type { UserDirectory } from "../users/user-directory.js";
import type { Slot } from "../../proxy/target.js";
import { batchOf, type Batch, type UserOutcome } from "./batch.js";

/** A move (stop, copy the data, start on the target) fails and backs out rather than run past this. */
const MOVE_DEADLINE_MS = 120_000;
const SLOTS: readonly Slot[] = ["a", "b"];

export interface MoveResult extends UserOutcome {
  /** Where the user was before; null for a user never placed. */
  from: string | null;
  /** Where the move took (or tried to take) the user; null when no target could be chosen. */
  to: string | null;
}

/**
 * A failed move is told by what it left: the user back where they were. A target host that will
 * not run the sandbox (a port it cannot publish, a start it refuses) is that host's fault, a
 * refusal (409) the operator can act on, not a fault of the hypervisor's own (500).
 */
function backedOut(err: unknown, user: string, from: string, to: string): HypervisorError {
  const e = asHypervisorError(err);
  const code = e.code === "internal" ? "unhealthy_target" : e.code;
  return new HypervisorError(
    code,
    `moving ${user} to host ${to} failed and was undone, ${user} stays on ${from}: ${e.message}`,
    { user, from, to },
    { cause: e },
  );
}

/**
 * Moving users between Podman hosts (DESIGN §8a), one user or a whole host (drain): the user's
 * requests are held meanwhile, and a move that fails leaves the user where they were.
 */
export class UserMoves {
  constructor(
    private readonly fleet: HostFleet | undefined,
    private readonly users: UserDirectory,
    private readonly manager: SandboxManager,
    private readonly generations: GenerationStore,
    private readonly log: Logger,
  ) {}

  /** One user's move to `host`, as a result: a failed move is `ok: false` with the error. */
  async move(user: string, host: string): Promise<MoveResult> {
    this.requireFleet();
    if (!this.users.hasUser(user)) throw new HypervisorError("not_found", `no user ${user}`, { user });
    return this.moveOne(user, () => host);
  }

  /**
   * Cordons a host for good (draining: it takes no new users from the first moment, and stays
   * so) and returns the run that moves its users off it one by one, each to the host a new user
   * would go to. A drain refused as a whole (no such host) is refused here, before it runs.
   */
  drain(host: string): { run(onResult?: (r: MoveResult) => void): Promise<Batch<MoveResult>> } {
    const fleet = this.requireFleet();
    fleet.setState(host, "draining");
    const users = this.users.users().filter((u) => fleet.hostOf(u) === host);
    return {
      run: async (onResult) => {
        const began = Date.now();
        const results: MoveResult[] = [];
        for (const user of users) {
          const r = await this.moveOne(user, () => fleet.pickTarget(user, host));
          results.push(r);
          onResult?.(r);
        }
        return batchOf(results, began);
      },
    };
  }

  private requireFleet(): HostFleet {
    if (!this.fleet) throw new HypervisorError("conflict", "hosts are Podman API endpoints: they need HYPERVISOR_RUNTIME=podman");
    return this.fleet;
  }

  private async moveOne(user: string, to: () => string): Promise<MoveResult> {
    const fleet = this.requireFleet();
    const began = Date.now();
    let target: string | null = null;
    try {
      target = to();
      const { from } = await this.relocate(fleet, user, target);
      return { user, ok: true, from: from ?? null, to: target, durationMs: Date.now() - began };
    } catch (err) {
      const e = asHypervisorError(err);
      if (e.code === "internal") this.log.error({ err: e.cause ?? e, user }, "move failed");
      return { user, ok: false, from: fleet.hostOf(user) ?? null, to: target, durationMs: Date.now() - began, error: { code: e.code, message: e.message } };
    }
  }

  /**
   * Moves both slots of a user to another host: with the user's requests held, stop both, copy
   * their data volumes, start on the target what ran before and check it healthy, then switch the
   * placement and remove the old containers and volumes. Any failure removes what was made on the
   * target and starts the user again where they were; their data there is untouched.
   */
  private async relocate(fleet: HostFleet, user: string, host: string): Promise<{ from: string | undefined }> {
    this.users.slot(user, "a"); // not_found for an unknown user
    return this.users.withUserLock(user, () =>
      this.manager.hold(user, async (held) => {
        const began = Date.now();
        const deadline = began + MOVE_DEADLINE_MS;
        const from = fleet.hostOf(user);
        fleet.checkTarget(user, host);
        if (from === undefined) {
          // Never started anywhere: nothing to copy, the next start happens on the target.
          fleet.place(user, host);
          return { from };
        }
        for (const slot of SLOTS) await held.stop(slot);
        const images = Object.fromEntries(SLOTS.map((slot) => [slot, this.generations.require(this.users.slot(user, slot).generationId).imageId]));
        try {
          await fleet.copyData(user, from, host, images);
          fleet.place(user, host);
          for (const slot of held.wasRunning) {
            if (Date.now() > deadline) throw new HypervisorError("deadline_exceeded", `moving ${user} took longer than ${MOVE_DEADLINE_MS} ms`, { user });
            await held.start(slot);
          }
        } catch (err) {
          held.forget();
          // The copies on the target go; the user's own data never left `from`.
          await fleet.discard(user, host).catch((e: unknown) => this.log.warn({ err: e, user, host }, "a failed move left sandboxes on the target"));
          fleet.place(user, from);
          for (const slot of held.wasRunning) {
            await held
              .start(slot)
              .catch((e: unknown) => this.log.warn({ err: e, user, slot, host: from }, "after a failed move, the sandbox did not start again"));
          }
          throw backedOut(err, user, from, host);
        }
        await fleet.discard(user, from).catch((err: unknown) => this.log.warn({ err, user, host: from }, "moved, but the old sandboxes could not be removed"));
        this.log.info({ user, from, to: host, ms: Date.now() - began }, "user moved");
        return { from };
      }),
    );
  }
}

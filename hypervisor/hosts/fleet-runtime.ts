import { HypervisorError } from "../errors.js";
import { notFound, type ContainerRuntime, type Freezing, type SandboxInfo, type SandboxSpec } from "../runtime/container-runtime.js";
import type { LogOptions } from "../runtime/log-lines.js";
import type { Slot } from "../../proxy/target.js";
import type { HostRegistry } from "./host-registry.js";
import type { HostTransfer } from "./host-transfer.js";
import type { Placement } from "./placement.js";

/**
 * Many Podman hosts behind the one runtime contract: each user is placed on one host (sticky,
 * in SQLite), and every call for that user goes to that host's Podman API. Whole when built:
 * the hosts and placements are loaded by the registry and placement it is given.
 */
export class FleetRuntime implements ContainerRuntime, Freezing {
  readonly kind = "podman";

  constructor(
    private readonly registry: HostRegistry,
    private readonly placement: Placement,
    private readonly transfer: HostTransfer,
  ) {}

  ping(): Promise<void> {
    return this.registry.ping();
  }

  /** Any host that holds the image will do: a create copies it to the others when they need it. */
  async resolveImage(ref: string): Promise<{ imageId: string; version: string }> {
    let last: unknown = new HypervisorError("runtime_unavailable", "no Podman host answers");
    for (const m of this.registry.ordered()) {
      if (m.reachable === false) continue;
      try {
        return await m.runtime.resolveImage(ref);
      } catch (err) {
        last = err;
      }
    }
    throw last;
  }

  async create(spec: SandboxSpec): Promise<SandboxInfo> {
    const m = this.placement.placed(spec.user) ?? this.placement.placeNew(spec.user);
    this.registry.refuseUnreachable(m);
    if (spec.generation.imageId) await this.transfer.ensureImage(m, spec.generation.imageId);
    return m.runtime.create(spec);
  }

  async start(user: string, slot: Slot): Promise<SandboxInfo> {
    return this.placedOrNotFound(user, slot).start(user, slot);
  }

  async stop(user: string, slot: Slot, timeoutMs: number): Promise<void> {
    await this.placedOrNotFound(user, slot).stop(user, slot, timeoutMs);
  }

  /** `podman pause` on the user's host. */
  async freeze(user: string, slot: Slot): Promise<void> {
    await this.placedOrNotFound(user, slot).freeze(user, slot);
  }

  async thaw(user: string, slot: Slot): Promise<void> {
    await this.placedOrNotFound(user, slot).thaw(user, slot);
  }

  async restart(user: string, slot: Slot, timeoutMs: number): Promise<SandboxInfo> {
    return this.placedOrNotFound(user, slot).restart(user, slot, timeoutMs);
  }

  async remove(user: string, slot: Slot, opts: { removeData: boolean }): Promise<void> {
    await this.placement.placed(user)?.runtime.remove(user, slot, opts);
  }

  async inspect(user: string, slot: Slot): Promise<SandboxInfo | undefined> {
    return this.placement.placed(user)?.runtime.inspect(user, slot);
  }

  /**
   * Every host's sandboxes of the users placed there; a host that does not answer is left out
   * (its users are found when it answers again), and only when none answers does the call fail.
   * A container of a user placed elsewhere (left by a move that could not clean up) is not listed.
   */
  async list(): Promise<SandboxInfo[]> {
    const members = this.registry.all();
    const results = await Promise.allSettled(members.map((m) => m.runtime.list()));
    if (members.length && results.every((r) => r.status === "rejected")) throw (results[0] as PromiseRejectedResult).reason;
    return results.flatMap((r, i) => (r.status === "fulfilled" ? r.value.filter((info) => this.placement.hostOf(info.user) === members[i]!.record.name) : []));
  }

  async *logs(user: string, slot: Slot, opts: LogOptions): AsyncIterable<string> {
    yield* this.placedOrNotFound(user, slot).logs(user, slot, opts);
  }

  private placedOrNotFound(user: string, slot: Slot) {
    const m = this.placement.placed(user);
    if (!m) throw notFound(user, slot);
    return m.runtime;
  }
}

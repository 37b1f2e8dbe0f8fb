import { dirname, join } from "node:path";
import type { Logger } from "pino";
import { HypervisorError } from "../errors.js";
import type { Reachability } from "../runtime/container-runtime.js";
import type { SlotDataPaths, SnapshotSpace } from "../runtime/slot-data.js";
import type { Slot } from "../../proxy/target.js";
import { FleetRuntime } from "./fleet-runtime.js";
import { HostRegistry, type FleetOptions, type Member } from "./host-registry.js";
import type { HostAdminState, HostRecord, HostStore } from "./host-store.js";
import { HostTransfer } from "./host-transfer.js";
import { Placement } from "./placement.js";
import { VolumeSnapshotSpace } from "./volume-snapshots.js";

export type HostState = HostAdminState | "unreachable";

/** A host as `GET /hosts` shows it (DESIGN §8a). */
export interface HostView {
  name: string;
  url: string;
  address: string;
  capacity: number;
  state: HostState;
  users: number;
  sandboxes: number | null;
  lastError: string | null;
  /** Who holds this host's sandboxes to the egress mode (DESIGN §5b). */
  egress: Member["egress"];
}

/**
 * The Podman hosts as a service (DESIGN §8a): the registry the operator changes, where each user
 * lives, and what a move between hosts asks of them. Each host is pinged all the time, so a
 * request for a user of a host that stopped answering fails at once (503) while everybody else
 * is served as before; nothing is ever moved without the operator.
 */
export class HostFleet implements Reachability {
  constructor(
    private readonly registry: HostRegistry,
    private readonly placement: Placement,
    private readonly transfer: HostTransfer,
  ) {}

  /** Starts the hosts' health checks. */
  start(): void {
    this.registry.start();
  }

  close(): void {
    this.registry.close();
  }

  // --- hosts, for the operator routes -------------------------------------------------------

  async hosts(): Promise<HostView[]> {
    const counts = this.placement.counts();
    const members = this.registry.all();
    await Promise.all(
      members.map(async (m) => {
        if (m.reachable === false) return;
        m.sandboxes = await m.runtime.list().then(
          (list) => list.filter((i) => this.placement.hostOf(i.user) === m.record.name).length,
          () => m.sandboxes,
        );
      }),
    );
    return members.map((m) => ({
      ...m.record,
      state: m.reachable === false ? "unreachable" : m.record.state,
      users: counts.get(m.record.name) ?? 0,
      sandboxes: m.sandboxes,
      lastError: m.lastError,
      egress: m.egress,
    }));
  }

  /** Per-host health for metrics and readiness, from memory. */
  hostHealth(): { name: string; up: boolean; users: number }[] {
    const counts = this.placement.counts();
    return this.registry.all().map((m) => ({ name: m.record.name, up: m.reachable !== false, users: counts.get(m.record.name) ?? 0 }));
  }

  addHost(record: Omit<HostRecord, "state">): Promise<HostRecord> {
    return this.registry.add(record);
  }

  setState(name: string, state: HostAdminState): HostRecord {
    return this.registry.setState(name, state);
  }

  removeHost(name: string): void {
    this.registry.remove(name);
  }

  // --- where users live, and what a move asks ------------------------------------------------

  hostOf(user: string): string | undefined {
    return this.placement.hostOf(user);
  }

  usersOn(host: string): string[] {
    return this.placement.usersOn(host);
  }

  unavailableFor(user: string, serving?: boolean): HypervisorError | undefined {
    return this.placement.unavailableFor(user, serving);
  }

  /** Throws unless `host` can take `user` now: registered, ready, reachable, with room. */
  checkTarget(user: string, host: string): void {
    this.placement.checkTarget(user, host);
  }

  /** The host a new user would go to, `except` one: what a drain moves each user to. */
  pickTarget(user: string, except: string): string {
    return this.placement.choose(user, except).record.name;
  }

  /** Copies the user's data volumes (and the images they need) from one host to another; changes nothing on `from`. */
  copyData(user: string, from: string, to: string, imageIds: Partial<Record<Slot, string>>): Promise<void> {
    return this.transfer.copyData(user, from, to, imageIds);
  }

  /** Persists that the user's sandboxes live on `host` from now on. */
  place(user: string, host: string): void {
    this.placement.place(user, host);
  }

  /** Forgets where a removed user lived, so the host's capacity is free again. */
  unplace(user: string): void {
    this.placement.unplace(user);
  }

  /** Removes the user's containers, volumes and networks on `host`; placement is not changed. */
  discard(user: string, host: string): Promise<void> {
    return this.transfer.discard(user, host);
  }

  /**
   * Where a user's slot data is, for snapshots (DESIGN §2a): on a Podman on this machine (a
   * `unix://` socket) the volume's mount point, copied copy-on-write where its file system allows;
   * on a remote host, volumes beside the data volume there, copied by that host's Podman.
   */
  async slotData(user: string, slot: Slot): Promise<{ paths: SlotDataPaths } | { space: SnapshotSpace }> {
    const host = this.placement.hostOf(user);
    if (!host) throw new HypervisorError("not_found", `${user} has no data yet: no sandbox was ever started`, { user, slot });
    const member = this.registry.member(host);
    if (!member.record.url.startsWith("unix://")) {
      this.registry.refuseUnreachable(member);
      return { space: new VolumeSnapshotSpace(member.runtime, user, slot) };
    }
    const mountpoint = await member.runtime.volumePath(user, slot);
    if (!mountpoint) throw new HypervisorError("not_found", `${user}'s slot ${slot} has no data volume yet`, { user, slot });
    // <volumes>/<name>/_data: the snapshots go beside _data, in the volume's own directory,
    // which Podman mounts nowhere and removes with the volume.
    return { paths: { data: mountpoint, snapshots: join(dirname(mountpoint), "hv-snapshots") } };
  }

  /** Throws unless every host answers now: what removing all of a user's data everywhere needs. */
  requireAllReachable(user: string): void {
    const down = this.registry.all().filter((m) => m.reachable === false);
    if (down.length) {
      throw new HypervisorError(
        "runtime_unavailable",
        `host ${down.map((m) => m.record.name).join(", ")} does not answer and may hold data of ${user}; try again when it does`,
        { user, hosts: down.map((m) => m.record.name), retryAfterSeconds: 5 },
      );
    }
  }

  /**
   * Removes everything of the user's on every host, wherever a move or a removal left it. Refused
   * before anything is removed while a host does not answer: it may hold the user's data.
   */
  async discardEverywhere(user: string): Promise<void> {
    this.requireAllReachable(user);
    for (const m of this.registry.all()) await this.transfer.discard(user, m.record.name);
  }
}

/** The fleet's runtime and its host service, over one registry and placement loaded from the store. */
export function openFleet(options: FleetOptions, store: HostStore, log: Logger): { runtime: FleetRuntime; fleet: HostFleet } {
  const registry = new HostRegistry(options, store, log);
  const placement = new Placement(store, registry, log);
  const transfer = new HostTransfer(registry, log);
  return { runtime: new FleetRuntime(registry, placement, transfer), fleet: new HostFleet(registry, placement, transfer) };
}

export type { FleetOptions };

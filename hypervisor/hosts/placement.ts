import type { Logger } from "pino";
import { HypervisorError } from "../errors.js";
import type { Reachability } from "../runtime/container-runtime.js";
import type { HostRegistry, Member } from "./host-registry.js";
import type { HostStore } from "./host-store.js";

/** Sandboxes a user holds on its host: both slots stay together, so placement reserves both. */
const PER_USER = 2;
/** What a user of an unreachable host is told to wait before trying again. */
const UNREACHABLE_RETRY_S = 5;

/**
 * Which host each user lives on: sticky, persisted before it is used, and changed only by a
 * move. A new user goes to the ready, reachable host with the most free room.
 */
export class Placement implements Reachability {
  private readonly placement: Map<string, string>;

  constructor(
    private readonly store: HostStore,
    private readonly registry: HostRegistry,
    private readonly log: Logger,
  ) {
    this.placement = store.placements();
  }

  hostOf(user: string): string | undefined {
    return this.placement.get(user);
  }

  usersOn(host: string): string[] {
    return [...this.placement].flatMap(([user, h]) => (h === host ? [user] : [])).sort();
  }

  /** Users per host, from memory. */
  counts(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const host of this.placement.values()) counts.set(host, (counts.get(host) ?? 0) + 1);
    return counts;
  }

  /** The host of a placed user; undefined for a user never placed. */
  placed(user: string): Member | undefined {
    const host = this.placement.get(user);
    if (host === undefined) return undefined;
    const m = this.registry.get(host);
    if (!m) throw new HypervisorError("internal", `user ${user} is placed on host ${host}, which is not registered`);
    return m;
  }

  /** Chosen and persisted in one synchronous step, so two users starting at once cannot both take the last room. */
  placeNew(user: string): Member {
    const m = this.choose(user);
    this.place(user, m.record.name);
    this.log.info({ user, host: m.record.name }, "user placed");
    return m;
  }

  /** The ready, reachable host with the most free room (capacity less what placed users reserve), `except` one. */
  choose(user: string, except?: string): Member {
    let best: { m: Member; free: number } | undefined;
    for (const m of this.registry.ordered()) {
      if (m.record.name === except || m.record.state !== "ready" || m.reachable === false) continue;
      const free = this.free(m, user);
      if (free >= PER_USER && (!best || free > best.free)) best = { m, free };
    }
    if (!best) {
      throw new HypervisorError("capacity_exhausted", "no ready host has room for another user; add or uncordon a host", { retryAfterSeconds: 30 });
    }
    return best.m;
  }

  /** Throws unless `host` can take `user` now: registered, ready, reachable, with room. */
  checkTarget(user: string, host: string): void {
    const m = this.registry.member(host);
    if (this.placement.get(user) === host) throw new HypervisorError("conflict", `user ${user} is already on host ${host}`, { user, host });
    if (m.record.state !== "ready") throw new HypervisorError("conflict", `host ${host} is ${m.record.state}: it takes no users`, { host });
    if (m.reachable === false) throw new HypervisorError("runtime_unavailable", `host ${host} is unreachable: ${m.lastError ?? "no answer"}`, { host });
    if (this.free(m, user) < PER_USER) {
      throw new HypervisorError("capacity_exhausted", `host ${host} has no room for another user (capacity ${m.record.capacity})`, {
        host,
        retryAfterSeconds: 30,
      });
    }
  }

  place(user: string, host: string): void {
    this.store.place(user, host);
    this.placement.set(user, host);
  }

  unplace(user: string): void {
    this.store.unplace(user);
    this.placement.delete(user);
  }

  unavailableFor(user: string, serving = false): HypervisorError | undefined {
    const host = this.placement.get(user);
    const m = host === undefined ? undefined : this.registry.get(host);
    if (m?.reachable !== false) return undefined;
    // Its API is down (Podman restarting, say) but what runs there still answers: keep serving it.
    if (serving && m.portsAnswer) return undefined;
    // The user learns that their sandbox is out of reach for now, not which machine it is on.
    return new HypervisorError("runtime_unavailable", "the Podman host your sandbox runs on cannot be reached; try again shortly", {
      retryAfterSeconds: UNREACHABLE_RETRY_S,
    });
  }

  private free(m: Member, user: string): number {
    let used = 0;
    for (const [u, host] of this.placement) if (u !== user && host === m.record.name) used += PER_USER;
    return m.record.capacity - used;
  }
}

import type { Logger } from "pino";
import { asHypervisorError, HypervisorError } from "../errors.js";
import { notFound, type ContainerRuntime, type HostMoves, type SandboxInfo, type SandboxSpec } from "../runtime/container-runtime.js";
import { PodmanRuntime } from "../runtime/podman-runtime.js";
import { dockerOptions, type SshCredentials } from "../runtime/podman-transport.js";
import { parsePodmanUrl } from "../runtime/podman-url.js";
import type { LogOptions } from "../runtime/log-lines.js";
import type { Slot } from "../../proxy/target.js";
import type { HostAdminState, HostRecord, HostStore } from "./host-store.js";

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
}

interface Member {
  record: HostRecord;
  runtime: PodmanRuntime;
  close(): void;
  /** undefined until the first health check answers. */
  reachable: boolean | undefined;
  /** Whether the ports its sandboxes publish answered at the last health check (the data plane). */
  portsAnswer: boolean;
  lastError: string | null;
  sandboxes: number | null;
  checking: boolean;
}

export interface FleetOptions {
  /** The hypervisor's own Podman socket: the host `local` unless an operator removed it. */
  localSocket: string;
  localCapacity: number;
  ssh: SshCredentials;
  /** How often each host is pinged, and how long a ping may take before the host counts as unreachable. */
  healthEveryMs?: number;
  pingTimeoutMs?: number;
}

const LOCAL = "local";
/** Sandboxes a user holds on its host: both slots stay together, so placement reserves both. */
const PER_USER = 2;
const FIRST_PING_MS = 5000;
/** What a user of an unreachable host is told to wait before trying again. */
const UNREACHABLE_RETRY_S = 5;

/**
 * Many Podman hosts behind the one runtime contract: each user is placed on one host (sticky,
 * in SQLite), and every call for that user goes to that host's Podman API. Each host is pinged
 * all the time, so a request for a user of a host that stopped answering fails at once (503)
 * while everybody else is served as before; nothing is ever moved without the operator.
 */
export class FleetRuntime implements ContainerRuntime {
  readonly kind = "podman";
  readonly moves: HostMoves = {
    hostOf: (user) => this.placement.get(user),
    checkTarget: (user, host) => this.checkTarget(user, host),
    pickTarget: (user, except) => this.choose(user, except).record.name,
    copyData: (user, from, to, imageIds) => this.copyData(user, from, to, imageIds),
    place: (user, host) => this.place(user, host),
    unplace: (user) => this.unplace(user),
    discard: (user, host) => this.discard(user, host),
  };
  private readonly members = new Map<string, Member>();
  private placement = new Map<string, string>();
  private store: HostStore | undefined;
  private log: Logger | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly copies = new Map<string, Promise<void>>();
  private readonly healthEveryMs: number;
  private readonly pingTimeoutMs: number;

  constructor(private readonly options: FleetOptions) {
    this.healthEveryMs = options.healthEveryMs ?? 250;
    this.pingTimeoutMs = options.pingTimeoutMs ?? 500;
  }

  /** Loads hosts and placements from the store (registering `local` the first time) and starts the health checks. */
  attach(store: HostStore, log: Logger): void {
    this.store = store;
    this.log = log;
    if (!store.known(LOCAL)) store.add({ name: LOCAL, url: `unix://${this.options.localSocket}`, address: "127.0.0.1", capacity: this.options.localCapacity });
    for (const record of store.hosts()) this.join(record);
    this.placement = store.placements();
    this.timer = setInterval(() => this.checkAll(), this.healthEveryMs);
    this.timer.unref();
    this.checkAll();
  }

  close(): void {
    clearInterval(this.timer);
    for (const m of this.members.values()) m.close();
  }

  // --- hosts, for the operator routes -------------------------------------------------------

  async hosts(): Promise<HostView[]> {
    const counts = new Map<string, number>();
    for (const host of this.placement.values()) counts.set(host, (counts.get(host) ?? 0) + 1);
    await Promise.all(
      [...this.members.values()].map(async (m) => {
        if (m.reachable === false) return;
        m.sandboxes = await m.runtime.list().then(
          (list) => list.filter((i) => this.placement.get(i.user) === m.record.name).length,
          () => m.sandboxes,
        );
      }),
    );
    return [...this.members.values()].map((m) => ({
      ...m.record,
      state: m.reachable === false ? "unreachable" : m.record.state,
      users: counts.get(m.record.name) ?? 0,
      sandboxes: m.sandboxes,
      lastError: m.lastError,
    }));
  }

  /** Per-host health for metrics and readiness, from memory. */
  hostHealth(): { name: string; up: boolean; users: number }[] {
    const counts = new Map<string, number>();
    for (const host of this.placement.values()) counts.set(host, (counts.get(host) ?? 0) + 1);
    return [...this.members.values()].map((m) => ({ name: m.record.name, up: m.reachable !== false, users: counts.get(m.record.name) ?? 0 }));
  }

  /** Registers a host after one successful ping, so a wrong URL or key is told at once, not at the first user. */
  async addHost(record: Omit<HostRecord, "state">): Promise<HostRecord> {
    const store = this.requireStore();
    if (this.members.has(record.name)) throw new HypervisorError("conflict", `host ${record.name} already exists`, { host: record.name });
    const candidate = this.connect({ ...record, state: "ready" });
    try {
      await candidate.runtime.ping(Math.max(this.pingTimeoutMs, 5000));
    } catch (err) {
      candidate.close();
      throw new HypervisorError("unhealthy_target", `host ${record.name} does not answer at ${record.url}: ${asHypervisorError(err).message}`, {
        host: record.name,
      });
    }
    let added: HostRecord;
    try {
      added = store.add(record);
    } catch (err) {
      candidate.close();
      throw err;
    }
    candidate.reachable = true;
    this.members.set(added.name, candidate);
    this.warnTcp(added);
    return added;
  }

  setState(name: string, state: HostAdminState): HostRecord {
    const m = this.member(name);
    this.requireStore().setState(name, state);
    m.record = { ...m.record, state };
    return m.record;
  }

  removeHost(name: string): void {
    const m = this.member(name);
    this.requireStore().remove(name);
    m.close();
    this.members.delete(name);
  }

  // --- the runtime contract -----------------------------------------------------------------

  async ping(): Promise<void> {
    if (!this.members.size) throw new HypervisorError("runtime_unavailable", "no Podman host is registered");
    const results = await Promise.allSettled([...this.members.values()].map((m) => this.check(m)));
    if (!results.some((r) => r.status === "fulfilled" && r.value)) throw new HypervisorError("runtime_unavailable", "no Podman host answers");
  }

  unavailableFor(user: string, serving = false): HypervisorError | undefined {
    const host = this.placement.get(user);
    const m = host === undefined ? undefined : this.members.get(host);
    if (m?.reachable !== false) return undefined;
    // Its API is down (Podman restarting, say) but what runs there still answers: keep serving it.
    if (serving && m.portsAnswer) return undefined;
    // The user learns that their sandbox is out of reach for now, not which machine it is on.
    return new HypervisorError("runtime_unavailable", "the Podman host your sandbox runs on cannot be reached; try again shortly", {
      retryAfterSeconds: UNREACHABLE_RETRY_S,
    });
  }

  /** Any host that holds the image will do: deploy copies it to the others when they need it. */
  async resolveImage(ref: string): Promise<{ imageId: string; version: string }> {
    let last: unknown = new HypervisorError("runtime_unavailable", "no Podman host answers");
    for (const m of this.ordered()) {
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
    const m = this.placed(spec.user) ?? this.placeNew(spec.user);
    this.refuseUnreachable(m);
    if (spec.generation.imageId) await this.ensureImage(m, spec.generation.imageId);
    return m.runtime.create(spec);
  }

  async start(user: string, slot: Slot): Promise<SandboxInfo> {
    const m = this.placed(user);
    if (!m) throw notFound(user, slot);
    return m.runtime.start(user, slot);
  }

  async stop(user: string, slot: Slot, timeoutMs: number): Promise<void> {
    const m = this.placed(user);
    if (!m) throw notFound(user, slot);
    await m.runtime.stop(user, slot, timeoutMs);
  }

  async restart(user: string, slot: Slot, timeoutMs: number): Promise<SandboxInfo> {
    const m = this.placed(user);
    if (!m) throw notFound(user, slot);
    return m.runtime.restart(user, slot, timeoutMs);
  }

  async remove(user: string, slot: Slot, opts: { removeData: boolean }): Promise<void> {
    await this.placed(user)?.runtime.remove(user, slot, opts);
  }

  async inspect(user: string, slot: Slot): Promise<SandboxInfo | undefined> {
    return this.placed(user)?.runtime.inspect(user, slot);
  }

  /**
   * Every host's sandboxes of the users placed there; a host that does not answer is left out
   * (its users are found when it answers again), and only when none answers does the call fail.
   * A container of a user placed elsewhere (left by a move that could not clean up) is not listed.
   */
  async list(): Promise<SandboxInfo[]> {
    const members = [...this.members.values()];
    const results = await Promise.allSettled(members.map((m) => m.runtime.list()));
    if (members.length && results.every((r) => r.status === "rejected")) throw (results[0] as PromiseRejectedResult).reason;
    return results.flatMap((r, i) => (r.status === "fulfilled" ? r.value.filter((info) => this.placement.get(info.user) === members[i]!.record.name) : []));
  }

  async *logs(user: string, slot: Slot, opts: LogOptions): AsyncIterable<string> {
    const m = this.placed(user);
    if (!m) throw notFound(user, slot);
    yield* m.runtime.logs(user, slot, opts);
  }

  // --- placement and moves ------------------------------------------------------------------

  private placed(user: string): Member | undefined {
    const host = this.placement.get(user);
    if (host === undefined) return undefined;
    const m = this.members.get(host);
    if (!m) throw new HypervisorError("internal", `user ${user} is placed on host ${host}, which is not registered`);
    return m;
  }

  /** Chosen and persisted in one synchronous step, so two users starting at once cannot both take the last room. */
  private placeNew(user: string): Member {
    const m = this.choose(user);
    this.place(user, m.record.name);
    this.log?.info({ user, host: m.record.name }, "user placed");
    return m;
  }

  /** The ready, reachable host with the most free room (capacity less what placed users reserve). */
  private choose(user: string, except?: string): Member {
    const used = new Map<string, number>();
    for (const [u, host] of this.placement) if (u !== user) used.set(host, (used.get(host) ?? 0) + PER_USER);
    let best: { m: Member; free: number } | undefined;
    for (const m of this.ordered()) {
      if (m.record.name === except || m.record.state !== "ready" || m.reachable === false) continue;
      const free = m.record.capacity - (used.get(m.record.name) ?? 0);
      if (free >= PER_USER && (!best || free > best.free)) best = { m, free };
    }
    if (!best) {
      throw new HypervisorError("capacity_exhausted", "no ready host has room for another user; add or uncordon a host", { retryAfterSeconds: 30 });
    }
    return best.m;
  }

  private checkTarget(user: string, host: string): void {
    const m = this.member(host);
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

  private free(m: Member, user: string): number {
    let used = 0;
    for (const [u, host] of this.placement) if (u !== user && host === m.record.name) used += PER_USER;
    return m.record.capacity - used;
  }

  private place(user: string, host: string): void {
    this.requireStore().place(user, host);
    this.placement.set(user, host);
  }

  private unplace(user: string): void {
    this.requireStore().unplace(user);
    this.placement.delete(user);
  }

  private async copyData(user: string, from: string, to: string, imageIds: Partial<Record<Slot, string>>): Promise<void> {
    const source = this.member(from);
    const target = this.member(to);
    this.refuseUnreachable(source);
    this.refuseUnreachable(target);
    for (const slot of ["a", "b"] as const) {
      const imageId = imageIds[slot];
      if (!imageId || !(await source.runtime.hasVolume(user, slot))) continue;
      // The helper containers that read and write the volume are made from the slot's own image.
      await this.ensureImage(source, imageId);
      await this.ensureImage(target, imageId);
      const archive = await source.runtime.exportVolume(user, slot, imageId);
      await target.runtime.importVolume(user, slot, imageId, archive);
    }
  }

  private async discard(user: string, host: string): Promise<void> {
    const m = this.member(host);
    for (const slot of ["a", "b"] as const) await m.runtime.remove(user, slot, { removeData: true });
  }

  /**
   * The hypervisor never pulls: a host that lacks a generation's image gets it from a host that
   * has it (`podman save` piped into `podman load`, both through the API), and the ID it then
   * holds must be the very same.
   */
  private async ensureImage(target: Member, imageId: string): Promise<void> {
    if (await target.runtime.hasImage(imageId)) return;
    const k = `${target.record.name}/${imageId}`;
    let pending = this.copies.get(k);
    if (!pending) {
      pending = this.copyImage(target, imageId).finally(() => this.copies.delete(k));
      this.copies.set(k, pending);
    }
    await pending;
  }

  private async copyImage(target: Member, imageId: string): Promise<void> {
    const began = Date.now();
    let source: Member | undefined;
    for (const m of this.ordered()) {
      if (m === target || m.reachable === false) continue;
      if (await m.runtime.hasImage(imageId).catch(() => false)) {
        source = m;
        break;
      }
    }
    if (!source) throw new HypervisorError("not_found", `image ${imageId} is on no reachable host to copy it from (the hypervisor never pulls)`);
    await target.runtime.importImage(await source.runtime.exportImage(imageId));
    if (!(await target.runtime.hasImage(imageId))) {
      throw new HypervisorError("internal", `image ${imageId} copied from ${source.record.name} to ${target.record.name} did not arrive under its ID`);
    }
    this.log?.info({ image: imageId, from: source.record.name, to: target.record.name, ms: Date.now() - began }, "image copied to host");
  }

  // --- members and their health --------------------------------------------------------------

  private join(record: HostRecord): void {
    this.members.set(record.name, this.connect(record));
    this.warnTcp(record);
  }

  private connect(record: HostRecord): Member {
    const url = parsePodmanUrl(record.url);
    const { options, close } = dockerOptions(url, this.options.ssh);
    const runtime = new PodmanRuntime({ docker: options, where: `host ${record.name} (${record.url})`, publishAddress: record.address });
    return { record, runtime, close, reachable: undefined, portsAnswer: false, lastError: null, sandboxes: null, checking: false };
  }

  private warnTcp(record: HostRecord): void {
    if (record.url.startsWith("tcp:")) {
      this.log?.warn(
        { host: record.name, url: record.url },
        "host reached over plain tcp: its Podman API is unauthenticated, so it must be on a private network only",
      );
    }
  }

  private checkAll(): void {
    for (const m of this.members.values()) if (!m.checking) void this.check(m);
  }

  private async check(m: Member): Promise<boolean> {
    m.checking = true;
    // Asked beside the API, so that when the API stops answering it is already known whether the
    // sandboxes there still do.
    const portsAnswer = m.runtime.publishedPortsAnswer(this.pingTimeoutMs);
    try {
      // The first ping may have to open the connection (an ssh handshake): it gets longer.
      await m.runtime.ping(m.reachable === undefined ? FIRST_PING_MS : this.pingTimeoutMs);
      if (m.reachable === false) this.log?.info({ host: m.record.name }, "host reachable again");
      m.reachable = true;
      m.portsAnswer = await portsAnswer;
      return true;
    } catch (err) {
      const message = asHypervisorError(err).message;
      m.portsAnswer = await portsAnswer;
      if (m.reachable !== false) {
        this.log?.warn(
          { host: m.record.name, err: message, portsAnswer: m.portsAnswer },
          "host's API unreachable: its running sandboxes are served while their ports answer; starts and stops get 503 until it answers",
        );
      }
      m.reachable = false;
      m.lastError = `${new Date().toISOString()} ${message}`;
      return false;
    } finally {
      m.checking = false;
    }
  }

  private refuseUnreachable(m: Member): void {
    if (m.reachable === false)
      throw new HypervisorError("runtime_unavailable", `host ${m.record.name} is unreachable: ${m.lastError ?? "no answer"}`, { host: m.record.name });
  }

  /** `local` first (the images the hypervisor builds are there), then by name. */
  private ordered(): Member[] {
    return [...this.members.values()].sort((a, b) => (a.record.name === LOCAL ? -1 : b.record.name === LOCAL ? 1 : a.record.name.localeCompare(b.record.name)));
  }

  private member(name: string): Member {
    const m = this.members.get(name);
    if (!m) throw new HypervisorError("not_found", `no host ${name}`, { host: name });
    return m;
  }

  private requireStore(): HostStore {
    if (!this.store) throw new HypervisorError("internal", "the host fleet is not attached to its store");
    return this.store;
  }
}

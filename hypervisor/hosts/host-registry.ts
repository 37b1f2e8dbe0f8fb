import type { Logger } from "pino";
import { asHypervisorError, HypervisorError } from "../errors.js";
import { PodmanRuntime } from "../runtime/podman-runtime.js";
import { dockerOptions, type SshCredentials } from "../runtime/podman-transport.js";
import { parsePodmanUrl } from "../runtime/podman-url.js";
import type { RemoteEgress, SandboxEgress } from "../runtime/container-runtime.js";
import type { HostAdminState, HostRecord, HostStore } from "./host-store.js";

/** One registered host: its Podman API and what the health check last saw of it. */
export interface Member {
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
  /**
   * DESIGN §5b: the mode this host's sandboxes are held to, and by whom: this machine's kernel
   * (`local`) or the host's own firewall, which the hypervisor cannot see; null without egress.
   */
  egress: { mode: "gateway" | "none" | "open"; enforcedBy: "hypervisor" | "host-firewall" } | null;
}

export interface FleetOptions {
  /** The hypervisor's own Podman socket: the host `local` unless an operator removed it. */
  localSocket: string;
  localCapacity: number;
  ssh: SshCredentials;
  /** How often each host is pinged, and how long a ping may take before the host counts as unreachable. */
  healthEveryMs?: number;
  pingTimeoutMs?: number;
  /** DESIGN §5b: egress for the hypervisor's own host (the gateway is not reachable from others). */
  egress?: SandboxEgress;
  /** DESIGN §5b, §8a: egress for every other host, whose own firewall holds its sandboxes to the mode. */
  remoteEgress?: RemoteEgress;
}

export const LOCAL = "local";
const FIRST_PING_MS = 5000;

/**
 * The registered Podman hosts (DESIGN §8a) and their health: loaded from the store when built
 * (registering `local` the first time), each pinged all the time once started, so a host that
 * stops answering is known at once and from memory.
 */
export class HostRegistry {
  private readonly members = new Map<string, Member>();
  private timer: NodeJS.Timeout | undefined;
  private readonly healthEveryMs: number;
  private readonly pingTimeoutMs: number;

  constructor(
    private readonly options: FleetOptions,
    private readonly store: HostStore,
    private readonly log: Logger,
  ) {
    this.healthEveryMs = options.healthEveryMs ?? 250;
    this.pingTimeoutMs = options.pingTimeoutMs ?? 500;
    if (!store.known(LOCAL)) store.add({ name: LOCAL, url: `unix://${options.localSocket}`, address: "127.0.0.1", capacity: options.localCapacity });
    for (const record of store.hosts()) {
      this.members.set(record.name, this.connect(record));
      this.warnTcp(record);
    }
  }

  /** Starts the health checks: one round now, then every `healthEveryMs`. */
  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.checkAll(), this.healthEveryMs);
    this.timer.unref();
    this.checkAll();
  }

  close(): void {
    clearInterval(this.timer);
    for (const m of this.members.values()) m.close();
  }

  all(): Member[] {
    return [...this.members.values()];
  }

  /** `local` first (the images the hypervisor builds are there), then by name. */
  ordered(): Member[] {
    return this.all().sort((a, b) => (a.record.name === LOCAL ? -1 : b.record.name === LOCAL ? 1 : a.record.name.localeCompare(b.record.name)));
  }

  member(name: string): Member {
    const m = this.members.get(name);
    if (!m) throw new HypervisorError("not_found", `no host ${name}`, { host: name });
    return m;
  }

  get(name: string): Member | undefined {
    return this.members.get(name);
  }

  /** Registers a host after one successful ping, so a wrong URL or key is told at once, not at the first user. */
  async add(record: Omit<HostRecord, "state">): Promise<HostRecord> {
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
      added = this.store.add(record);
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
    this.store.setState(name, state);
    m.record = { ...m.record, state };
    return m.record;
  }

  /** The store refuses a host that still holds users. */
  remove(name: string): void {
    const m = this.member(name);
    this.store.remove(name);
    m.close();
    this.members.delete(name);
  }

  /** Pings every host now; resolves once one answers, fails when none does. */
  async ping(): Promise<void> {
    if (!this.members.size) throw new HypervisorError("runtime_unavailable", "no Podman host is registered");
    const results = await Promise.allSettled(this.all().map((m) => this.check(m)));
    if (!results.some((r) => r.status === "fulfilled" && r.value)) throw new HypervisorError("runtime_unavailable", "no Podman host answers");
  }

  refuseUnreachable(m: Member): void {
    if (m.reachable === false)
      throw new HypervisorError("runtime_unavailable", `host ${m.record.name} is unreachable: ${m.lastError ?? "no answer"}`, { host: m.record.name });
  }

  private connect(record: HostRecord): Member {
    const url = parsePodmanUrl(record.url);
    const { options, close } = dockerOptions(url, this.options.ssh);
    // This machine's kernel fences its own host's sandboxes only; another host's firewall holds its own.
    const local = record.url === `unix://${this.options.localSocket}` || record.url === this.options.localSocket;
    const remote = local ? undefined : this.options.remoteEgress?.forHost(record.address, url.transport === "unix" ? undefined : url.host);
    const egress = local ? this.options.egress : remote?.egress;
    const runtime = new PodmanRuntime({
      docker: options,
      where: `host ${record.name} (${record.url})`,
      publishAddress: record.address,
      ...(egress ? { egress, fenceEgress: local } : {}),
    });
    const release = () => {
      close();
      remote?.release();
    };
    const mode = local ? this.options.egress?.mode : this.options.remoteEgress?.mode;
    const egressOf: Member["egress"] = mode ? { mode, enforcedBy: local ? "hypervisor" : "host-firewall" } : null;
    return { record, runtime, close: release, reachable: undefined, portsAnswer: false, lastError: null, sandboxes: null, checking: false, egress: egressOf };
  }

  private warnTcp(record: HostRecord): void {
    if (record.url.startsWith("tcp:")) {
      this.log.warn(
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
      if (m.reachable === false) this.log.info({ host: m.record.name }, "host reachable again");
      m.reachable = true;
      m.portsAnswer = await portsAnswer;
      return true;
    } catch (err) {
      const message = asHypervisorError(err).message;
      m.portsAnswer = await portsAnswer;
      if (m.reachable !== false) {
        this.log.warn(
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
}

import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync } from "node:fs";
import { chmod, mkdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Slot } from "../../../proxy/target.js";
import { HypervisorError } from "../../errors.js";
import {
  DEFAULT_LOG_MAX_BYTES,
  notFound,
  sandboxEnv,
  sandboxName,
  type ContainerRuntime,
  type Freezing,
  type SandboxEgress,
  type SandboxInfo,
  type SandboxSpec,
  type SelfStopping,
} from "../container-runtime.js";
import type { LogOptions } from "../log-lines.js";
import { Bubblewrap, EXEC_TIMEOUT_MS } from "./bubblewrap.js";
import { crashPoint } from "../../crash-points.js";
import { withoutCapabilities } from "../../capabilities.js";
import { inCgroups, killUid, SandboxCgroups } from "./cgroups.js";
import { diskBound, diskUsage, overDisk, sharedFileSystem } from "./disk.js";
import { DiskQuotas } from "./disk-quota.js";
import { probeContainment, type Containment } from "./containment.js";
import { CgroupFreezer } from "./freezer.js";
import { migrateLegacyData } from "./legacy-data.js";
import type { SlotDataPaths } from "../slot-data.js";
import { LOG_FILE, LogDrains } from "./log-drains.js";
import { LEGACY_TRIM_EVERY_MS, readLog, trimLegacyLogs } from "./logs.js";
import { DEFAULT_SANDBOX_NETWORK, SANDBOX_PORT, SandboxNetworks } from "./netns.js";
import { LoopbackPorts } from "./ports.js";
import { closeInheritedDescriptors, environHas, signal, waitPidGone } from "./proc.js";
import { Records, type ProcessRecord } from "./records.js";
import { UidClaims } from "./uids.js";

export type { Containment } from "./containment.js";

export interface ProcessRuntimeOptions {
  /** The runtime's own records (pid, port, uid claims) and the sandboxes' logs: in the state dir. */
  recordsDir: string;
  /** One data directory per sandbox, the only place it may write: outside the state dir. */
  dataDir: string;
  /** What no sandbox may see, even read-only: the state dir, the operator socket, token files. */
  protectedPaths?: string[];
  /** The bubblewrap binary; tests point it at a missing file to stand for a host without it. */
  bwrap?: string;
  /** IPv4 block (/16 to /30) whose /31s are the sandboxes' own networks (HYPERVISOR_PROCESS_NETWORK). */
  network?: string;
  /** false: sandboxes share the host's network, as where no namespace can be made (benchmarks set it to compare). */
  ownNetwork?: boolean;
  /** DESIGN §5b: the egress mode the namespaces' rules enforce, and each start's gateway token. Absent: no egress at all. */
  egress?: SandboxEgress;
  /** How often running sandboxes' data is measured against their disk (HYPERVISOR_SANDBOX_DISK); default a minute. */
  diskCheckMs?: number;
}

const DISK_CHECK_MS = 60_000;

const BIND_HOST = "127.0.0.1";

/**
 * Sandboxes as child processes: the embedded default where no Podman is installed. Each runs
 * detached with an allowlisted environment, so it outlives a hypervisor restart and is adopted
 * again through its record and /proc.
 *
 * Where the host allows it (bubblewrap, and root or unprivileged user namespaces) each sandbox
 * is contained (DESIGN §5a): its own uid, mount, pid, ipc and uts namespaces, only its data
 * directory writable and its command's files read-only; as root also its own network namespace,
 * reached at an address only it has (./netns.ts). Without one (not root) sandboxes share the
 * host's network and listen on loopback ports handed out here.
 */
export class ProcessRuntime implements ContainerRuntime, Freezing, SelfStopping {
  readonly kind = "process";
  /** Each sandbox's freezer group; `freezer.available` says whether this host lets it freeze. */
  readonly freezer: CgroupFreezer;
  private readonly children = new Map<number, ChildProcess>();
  private readonly records: Records;
  private readonly dataDir: string;
  private readonly bubblewrap: Bubblewrap;
  private readonly uids: UidClaims;
  private readonly networks: SandboxNetworks | undefined;
  /** Held past a start's longest wait for its command, so two starts at once never share a port. */
  private readonly ports = new LoopbackPorts(BIND_HOST, EXEC_TIMEOUT_MS + 5000);
  private prepared: Promise<Containment> | undefined;
  private readonly egress: SandboxEgress | undefined;
  /** Each sandbox's cgroup, where the host lets the daemon make them (root, or a delegated v2 group). */
  private cgroups: SandboxCgroups | undefined;
  /** Each running sandbox's output, drained from its pipe into its bounded log. */
  private readonly drains = new LogDrains();
  private readonly diskCheckMs: number;
  /** How each slot's data dir is bounded: a btrfs qgroup where the file system has one, else measured. */
  private quotas: DiskQuotas | undefined;
  private readonly stoppedListeners: ((user: string, slot: Slot) => void)[] = [];

  constructor(options: ProcessRuntimeOptions) {
    this.records = new Records(options.recordsDir);
    this.dataDir = options.dataDir;
    this.diskCheckMs = options.diskCheckMs ?? DISK_CHECK_MS;
    this.uids = new UidClaims(options.recordsDir);
    this.freezer = new CgroupFreezer(createHash("sha256").update(options.recordsDir).digest("hex").slice(0, 8));
    this.egress = options.egress;
    this.networks =
      options.ownNetwork === false ? undefined : new SandboxNetworks(options.network ?? DEFAULT_SANDBOX_NETWORK, options.recordsDir, options.egress);
    this.bubblewrap = new Bubblewrap({
      path: options.bwrap ?? "/usr/bin/bwrap",
      guarded: [options.dataDir, options.recordsDir, ...(options.protectedPaths ?? [])],
    });
  }

  /**
   * Readies the runtime once: descriptors a sandbox must not inherit, its directories, data left in the layout before data dirs moved
   * out of the state dir, what containment this host allows, and the networks of sandboxes
   * that no longer run (a crash left them). The daemon calls it before serving; every start
   * awaits it.
   */
  prepare(): Promise<Containment> {
    this.prepared ??= (async () => {
      // Before anything of the daemon's own is open: sandboxes receive stdin, stdout and stderr only.
      closeInheritedDescriptors();
      await mkdir(this.records.root, { recursive: true, mode: 0o700 });
      // Owner only: no sandbox uid may enter, let alone list, the root of everyone's data.
      await mkdir(this.dataDir, { recursive: true, mode: 0o700 });
      await chmod(this.dataDir, 0o700);
      await migrateLegacyData(
        this.records,
        (user, slot) => this.sandboxData(user, slot),
        (record, ms, identity) => this.kill(record, ms, identity),
      );
      // Sandboxes of an earlier release write their log themselves: bounded from outside.
      setInterval(() => void trimLegacyLogs(this.records.root, DEFAULT_LOG_MAX_BYTES), LEGACY_TRIM_EVERY_MS).unref();
      const containment = await probeContainment(this.bubblewrap, this.networks);
      const cgroups = await SandboxCgroups.open();
      if (typeof cgroups === "string") containment.reasons.push(cgroups);
      else this.cgroups = cgroups;
      this.quotas = await DiskQuotas.open(this.dataDir);
      containment.disk = { method: this.quotas.method, note: this.quotas.note };
      // With a quota a sandbox cannot write past its disk, so it cannot fill the state dir's either.
      const shared = this.quotas.method === "measured" ? await sharedFileSystem(this.records.root, this.dataDir) : undefined;
      if (shared) containment.reasons.push(shared);
      setInterval(() => void this.checkDisks(), this.diskCheckMs).unref();
      await this.adoptProcesses();
      if (containment.loopbackFenced) await this.sweepNetworks();
      return containment;
    })();
    return this.prepared;
  }

  async ping(): Promise<void> {
    await mkdir(this.records.root, { recursive: true, mode: 0o700 });
  }

  async resolveImage(ref: string): Promise<{ imageId: string; version: string }> {
    throw new HypervisorError("bad_request", `the process runtime runs commands, not images (${ref})`);
  }

  async create(spec: SandboxSpec): Promise<SandboxInfo> {
    if (!spec.generation.command?.length) {
      throw new HypervisorError("bad_request", `generation ${spec.generation.id} has no command for the process runtime`);
    }
    await this.prepare();
    if (await this.records.read(spec.user, spec.slot)) {
      throw new HypervisorError("conflict", `sandbox ${sandboxName(spec.user, spec.slot)} already exists`);
    }
    await this.records.make(spec.user, spec.slot);
    await this.quotas!.make(this.sandboxData(spec.user, spec.slot));
    await this.records.write(spec.user, spec.slot, { spec });
    return this.info({ spec }, false);
  }

  async start(user: string, slot: Slot): Promise<SandboxInfo> {
    const containment = await this.prepare();
    const record = await this.records.read(user, slot);
    if (!record) throw notFound(user, slot);
    if (record.pid && this.alive(record)) return this.info(record, true);
    // Whatever still runs of this slot (a start the daemon died in before it wrote the record)
    // goes first: never two processes on one slot's data.
    await this.killAll(user, slot);
    const dataDir = this.sandboxData(user, slot);
    const { diskBytes } = record.spec.limits;
    // At every start, not once: a restore, promote or fork since put another subvolume in its place.
    await this.quotas!.place(dataDir, diskBytes);
    const name = sandboxName(user, slot);
    if (diskBytes) {
      const over = await this.measure(name, dataDir, diskBytes);
      if (over) {
        await this.records.write(user, slot, { spec: record.spec, overDisk: over.message });
        throw over;
      }
    }
    await this.cgroups?.prepare(name, record.spec.limits);
    const cgroupProcs = this.cgroups?.procsFiles(name) ?? [];
    const command = record.spec.generation.command!;
    const uid = containment.ownUid ? await this.uids.uidFor(name, dataDir) : undefined;
    // Its own network: the contract's port, at an address only it has. Shared: HOST keeps it on
    // a loopback port of its own.
    const networks = containment.namespaces && containment.loopbackFenced ? this.networks : undefined;
    const net = await networks?.create(`${user}-${slot}`);
    const port = net ? SANDBOX_PORT : await this.ports.free();
    // The gateway's token only where the kernel holds the sandbox to its own address: shared, the
    // token would be valid from the host's loopback, for every process there.
    const egressEnv = net && this.egress ? this.egress.envFor(record.spec) : {};
    if (net) this.egress?.bind(user, slot, net.address);
    const env = net ? { ...sandboxEnv(record.spec, port, dataDir), ...egressEnv } : { ...sandboxEnv(record.spec, port, dataDir), HOST: BIND_HOST };
    // /tmp is a tmpfs, charged to the sandbox's memory: half of it at most, so a full /tmp is an
    // error the sandbox sees rather than its own processes killed.
    const bounds = { tmpBytes: Math.floor(record.spec.limits.memoryBytes / 2), nproc: record.spec.limits.pids };
    crashPoint("before-spawn");
    const output = this.drains.open(this.records.dir(user, slot), record.spec.limits.logBytes ?? DEFAULT_LOG_MAX_BYTES);
    let spawned: { pid: number; init: number | undefined; child: ChildProcess };
    try {
      // Its freezer's group too (cgroup v1: a hierarchy of its own), joined the same way.
      const groups = [...cgroupProcs, ...(await this.freezer.prepare(name))];
      spawned = containment.namespaces
        ? await this.bubblewrap.spawn(command, { uid, hostname: name, dataDir, env, ...bounds }, output, net && networks?.path(net.netns), groups)
        : await spawnPlain(command, dataDir, env, output, groups);
    } catch (err) {
      this.egress?.revoke(user, slot);
      await this.killAll(user, slot);
      if (net) await networks?.remove(net.netns).catch(() => undefined);
      throw err;
    } finally {
      closeSync(output);
    }
    crashPoint("after-spawn");
    const { pid, init, child } = spawned;
    this.children.set(pid, child);
    child.once("exit", () => this.children.delete(pid));
    child.unref();
    const started: ProcessRecord = { spec: record.spec, pid, init, port, net, startedAt: new Date().toISOString() };
    await this.records.write(user, slot, started);
    crashPoint("after-record");
    return this.info(started, true);
  }

  async stop(user: string, slot: Slot, timeoutMs: number): Promise<void> {
    await this.halt(user, slot, timeoutMs);
  }

  /** stop(); `overDisk` the reason it was stopped over its disk, recorded with the stop itself. */
  private async halt(user: string, slot: Slot, timeoutMs: number, overDisk?: string): Promise<void> {
    const record = await this.records.read(user, slot);
    if (!record) throw notFound(user, slot);
    // A frozen process hears no signal until it is thawed.
    if (record.pid && this.alive(record)) await this.freezer.thaw(sandboxName(user, slot)).catch(() => undefined);
    await this.kill(record, timeoutMs);
    // Then what is left of it, setsid children included, before anything it held is given up.
    await this.killAll(user, slot);
    this.egress?.revoke(user, slot);
    // A group a straggler still holds stays (the next start reuses it): the stop itself is done.
    await this.freezer.remove(sandboxName(user, slot)).catch(() => undefined);
    // Its address is given up only once nothing of it runs: until then no other sandbox can have it.
    if (record.net) await this.networks?.remove(record.net.netns);
    // Why it was stopped over its disk stays until a start succeeds.
    const reason = overDisk ?? record.overDisk;
    await this.records.write(user, slot, { spec: record.spec, ...(reason ? { overDisk: reason } : {}) });
  }

  async restart(user: string, slot: Slot, timeoutMs: number): Promise<SandboxInfo> {
    await this.stop(user, slot, timeoutMs);
    return this.start(user, slot);
  }

  async remove(user: string, slot: Slot, opts: { removeData: boolean }): Promise<void> {
    const record = await this.records.read(user, slot);
    if (record) await this.stop(user, slot, 10_000);
    else await this.killAll(user, slot);
    await this.cgroups?.remove(sandboxName(user, slot));
    // Data an earlier removal kept has no record left; removeData still removes it.
    if (!record && !opts.removeData) return;
    if (opts.removeData) {
      const dataDir = this.sandboxData(user, slot);
      const owner = await stat(dataDir).then(
        (s) => s.uid,
        () => undefined,
      );
      await this.prepare();
      await this.quotas!.remove(dataDir);
      if (owner !== undefined) await this.uids.release(owner, sandboxName(user, slot));
    }
    await this.records.remove(user, slot, opts.removeData);
  }

  async inspect(user: string, slot: Slot): Promise<SandboxInfo | undefined> {
    const record = await this.records.read(user, slot);
    if (!record) return undefined;
    const running = this.alive(record);
    const info = this.info(record, running);
    return running && (await this.freezer.frozen(info.name)) ? { ...info, frozen: true } : info;
  }

  async freeze(user: string, slot: Slot): Promise<void> {
    await this.runningOrNotFound(user, slot);
    await this.freezer.freeze(sandboxName(user, slot));
  }

  async thaw(user: string, slot: Slot): Promise<void> {
    await this.runningOrNotFound(user, slot);
    await this.freezer.thaw(sandboxName(user, slot));
  }

  async list(): Promise<SandboxInfo[]> {
    const infos: SandboxInfo[] = [];
    for (const { user, slot } of await this.records.entries()) {
      const info = await this.inspect(user, slot);
      if (info) infos.push(info);
    }
    return infos;
  }

  async *logs(user: string, slot: Slot, opts: LogOptions): AsyncIterable<string> {
    if (!(await this.records.read(user, slot))) throw notFound(user, slot);
    yield* readLog(join(this.records.dir(user, slot), LOG_FILE), opts, async () => {
      const record = await this.records.read(user, slot);
      return record !== undefined && this.alive(record);
    });
  }

  onStopped(listener: (user: string, slot: Slot) => void): void {
    this.stoppedListeners.push(listener);
  }

  private async runningOrNotFound(user: string, slot: Slot): Promise<void> {
    const record = await this.records.read(user, slot);
    if (!record || !this.alive(record)) throw notFound(user, slot);
  }

  /**
   * Running sandboxes over their disk are stopped; their next start is refused with the reason
   * until their data is smaller. Returns the sandboxes it stopped.
   */
  async checkDisks(): Promise<{ user: string; slot: Slot; reason: string }[]> {
    const stopped: { user: string; slot: Slot; reason: string }[] = [];
    for (const { user, slot } of await this.records.entries()) {
      const record = await this.records.read(user, slot);
      const diskBytes = record?.spec.limits.diskBytes;
      if (!record || !diskBytes || !this.alive(record)) continue;
      const over = await this.measure(sandboxName(user, slot), this.sandboxData(user, slot), diskBytes);
      if (!over) continue;
      await this.halt(user, slot, 5000, over.message).catch(() => undefined);
      for (const listener of this.stoppedListeners) listener(user, slot);
      stopped.push({ user, slot, reason: over.message });
    }
    return stopped;
  }

  /**
   * Whether the slot's data is over its disk. Under a btrfs qgroup only its files are counted: the
   * kernel holds its bytes, and counts a clone (`cp` makes them by default on btrfs) once, where a
   * walk would count it once per file and stop a sandbox for data it does not hold.
   */
  private async measure(name: string, dataDir: string, diskBytes: number): Promise<HypervisorError | undefined> {
    const held = this.quotas?.method === "btrfs qgroup";
    const bound = diskBound(diskBytes);
    return overDisk(name, await diskUsage(dataDir, held ? { ...bound, bytes: Infinity } : bound), diskBytes, held);
  }

  /**
   * Every process of the sandbox, found from the kernel alone: its cgroup's members and whatever
   * runs as its uid (anything it forked, wherever it went). Killed, and waited for, until none is
   * left; only then may its uid, address or data pass to anyone else.
   */
  private async killAll(user: string, slot: Slot): Promise<void> {
    const name = sandboxName(user, slot);
    // A frozen process hears no signal, SIGKILL included, until it is thawed.
    await this.freezer.thaw(name).catch(() => undefined);
    const uid = await this.uids.owned(name, this.sandboxData(user, slot));
    const done = await Promise.all([this.cgroups?.killAll(name) ?? true, uid === undefined ? true : killUid(uid)]);
    if (done.includes(false)) throw new HypervisorError("internal", `processes of sandbox ${name} outlived SIGKILL`);
  }

  /**
   * After a restart: a sandbox its record names as running has its output drained again; the
   * processes of one whose record names none (the daemon died between spawning it and
   * recording it) are killed, so no slot ever runs twice.
   */
  private async adoptProcesses(): Promise<void> {
    for (const { user, slot } of await this.records.entries()) {
      const record = await this.records.read(user, slot);
      if (!record) continue;
      if (this.alive(record)) this.drains.attach(this.records.dir(user, slot), record.spec.limits.logBytes ?? DEFAULT_LOG_MAX_BYTES);
      else await this.killAll(user, slot);
    }
  }

  /** The networks no running sandbox of this runtime uses, left by a crash or a sandbox that died. */
  private async sweepNetworks(): Promise<void> {
    const inUse = new Set<string>();
    for (const { user, slot } of await this.records.entries()) {
      const record = await this.records.read(user, slot);
      if (record?.net && this.alive(record)) inUse.add(record.net.netns);
    }
    await this.networks?.sweep(async (netns) => inUse.has(netns));
  }

  private sandboxData(user: string, slot: Slot): string {
    return join(this.dataDir, `${user}-${slot}`);
  }

  /**
   * The slot's data and its snapshots' directory (DESIGN §2a): the snapshots under a dot-named
   * directory of the data dir, which no user name can be (USER_NAME) and no sandbox can see.
   */
  dataPaths(user: string, slot: Slot): SlotDataPaths {
    return { data: this.sandboxData(user, slot), snapshots: join(this.dataDir, ".snapshots", `${user}-${slot}`) };
  }

  /**
   * SIGTERM to the sandbox's process group, so its own children hear it too, then SIGKILL after
   * timeoutMs: contained, to the namespace's init, which takes every process of the sandbox
   * with it (its init ignores the SIGTERM, as a namespace's init without a handler does).
   */
  private async kill(record: ProcessRecord, timeoutMs: number, identity?: string): Promise<void> {
    const gone = (ms: number) => (identity ? waitPidGone(record.pid!, identity, ms) : this.waitGone(record, ms));
    if (!record.pid || !(identity ? environHas(record.pid, identity) : this.alive(record))) return;
    signal(-(record.init ?? record.pid), "SIGTERM");
    if (!(await gone(timeoutMs))) {
      signal(record.init ? record.init : -record.pid, "SIGKILL");
      await gone(5000);
    }
  }

  /**
   * A PID alone can be reused after the sandbox died; the process must also carry this
   * sandbox's DATA_DIR in its environment to count as ours.
   */
  private alive(record: ProcessRecord): boolean {
    if (!record.pid) return false;
    const child = this.children.get(record.pid);
    if (child) return child.exitCode === null && child.signalCode === null;
    return environHas(record.pid, `DATA_DIR=${this.sandboxData(record.spec.user, record.spec.slot)}`);
  }

  private async waitGone(record: ProcessRecord, timeoutMs: number): Promise<boolean> {
    const child = record.pid ? this.children.get(record.pid) : undefined;
    if (child) {
      if (child.exitCode !== null || child.signalCode !== null) return true;
      // The timer is cancelled on exit, so a finished stop leaves nothing pending; it stays ref'd
      // because the detached child itself does not keep the event loop alive while we wait.
      const cancel = new AbortController();
      const exited = new Promise<boolean>((resolve) => child.once("exit", () => resolve(true)));
      const timedOut = sleep(timeoutMs, false, { signal: cancel.signal }).catch(() => false);
      try {
        return await Promise.race([exited, timedOut]);
      } finally {
        cancel.abort();
      }
    }
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (!this.alive(record)) return true;
      await sleep(20);
    }
    return !this.alive(record);
  }

  private info(record: ProcessRecord, running: boolean): SandboxInfo {
    const { user, slot, generation } = record.spec;
    return {
      id: running && record.pid ? String(record.pid) : "",
      name: sandboxName(user, slot),
      user,
      slot,
      generationId: generation.id,
      running,
      endpoint: running && record.port ? { host: record.net?.address ?? BIND_HOST, port: record.port } : undefined,
      startedAt: running ? record.startedAt : undefined,
      ...(this.quotas ? { disk: this.quotas.method } : {}),
      ...(!running && record.overDisk ? { overDisk: record.overDisk } : {}),
    };
  }
}

/** Uncontained, as before containment: the daemon's uid and view, in a process group of its own. */
async function spawnPlain(
  command: string[],
  dataDir: string,
  env: Record<string, string>,
  output: number,
  cgroupProcs: string[],
): Promise<{ pid: number; init: undefined; child: ChildProcess }> {
  const [executable, ...args] = inCgroups(withoutCapabilities(command), cgroupProcs);
  const child = spawn(executable!, args, { cwd: dataDir, env, detached: true, stdio: ["ignore", output, output] });
  const pid = await new Promise<number>((resolve, reject) => {
    child.once("spawn", () => resolve(child.pid!));
    child.once("error", (err) => reject(new HypervisorError("internal", `cannot start ${executable}: ${err.message}`)));
  });
  return { pid, init: undefined, child };
}

import { HypervisorError } from "../errors.js";
import {
  notFound,
  sandboxEnv,
  sandboxName,
  type ContainerRuntime,
  type Freezing,
  type HealthAnswer,
  type HealthProbe,
  type SandboxInfo,
  type SandboxSpec,
} from "./container-runtime.js";
import type { Endpoint, Slot } from "../../proxy/target.js";
import { pause, type LogOptions } from "./log-lines.js";

export type RuntimeMethod = Exclude<keyof ContainerRuntime, "kind"> | keyof Freezing;

/** Not a resolvable name: anything that tries real HTTP against a fake endpoint fails at once. */
const HOST = "fake";

interface FakeSandbox {
  spec: SandboxSpec;
  id: string;
  /** What the sandbox printed, one line per entry. */
  log: string[];
  /** Wakes the readers following the log: a line was added, or the sandbox stopped. */
  wake: Set<() => void>;
  /** Present while the sandbox runs. */
  run?: { port: number; env: Record<string, string>; startedAt: string; frozen?: boolean };
}

interface Hold {
  arrive(): void;
  released: Promise<void>;
}

/**
 * Sandboxes in memory, for tests of whatever drives a ContainerRuntime: no processes, no ports,
 * no waiting. It passes the same contract suite as the real runtimes and takes generations as
 * the process runtime does (a command, no images). Tests steer it through the control methods
 * below, which neither count as calls nor fail while the runtime is unavailable.
 */
export class FakeRuntime implements ContainerRuntime, Freezing {
  readonly kind = "fake";
  /** Answers from memory: healthy while the sandbox at that endpoint runs, unless set otherwise; the probe its capabilities name. */
  readonly health: HealthProbe = {
    probe: async (endpoint) => this.answerHealth(endpoint).healthy,
    check: async (endpoint) => this.answerHealth(endpoint),
  };
  private available = true;
  private readonly counts: Record<RuntimeMethod, number> = {
    ping: 0,
    resolveImage: 0,
    create: 0,
    start: 0,
    stop: 0,
    restart: 0,
    remove: 0,
    inspect: 0,
    list: 0,
    logs: 0,
    freeze: 0,
    thaw: 0,
  };
  private readonly sandboxes = new Map<string, FakeSandbox>();
  /** Data outlives its sandbox unless removed with removeData, as volumes and state dirs do. */
  private readonly volumes = new Map<string, Map<string, string>>();
  /** Keyed by name, not by sandbox, so a test can set it before the sandbox is created. */
  private readonly unhealthy = new Set<string>();
  private readonly holds = new Map<string, Hold>();
  private nextId = 1;
  private nextPort = 10_000;

  async ping(): Promise<void> {
    this.enter("ping");
  }

  async resolveImage(ref: string): Promise<{ imageId: string; version: string }> {
    this.enter("resolveImage");
    throw new HypervisorError("bad_request", `the fake runtime runs commands, not images (${ref})`);
  }

  async create(spec: SandboxSpec): Promise<SandboxInfo> {
    this.enter("create");
    if (!spec.generation.command?.length) {
      throw new HypervisorError("bad_request", `generation ${spec.generation.id} has no command for the fake runtime`);
    }
    const name = sandboxName(spec.user, spec.slot);
    if (this.sandboxes.has(name)) throw new HypervisorError("conflict", `sandbox ${name} already exists`);
    if (!this.volumes.has(name)) this.volumes.set(name, new Map());
    const sandbox: FakeSandbox = { spec, id: `fake-${this.nextId++}`, log: [], wake: new Set() };
    this.sandboxes.set(name, sandbox);
    return info(sandbox);
  }

  async start(user: string, slot: Slot): Promise<SandboxInfo> {
    this.enter("start");
    return this.boot(user, slot);
  }

  /** Stops at once: there is no process to wait for, so the timeout never runs out. */
  async stop(user: string, slot: Slot, _timeoutMs: number): Promise<void> {
    this.enter("stop");
    halt(this.require(user, slot));
  }

  async restart(user: string, slot: Slot, _timeoutMs: number): Promise<SandboxInfo> {
    this.enter("restart");
    halt(this.require(user, slot));
    return this.boot(user, slot);
  }

  async remove(user: string, slot: Slot, opts: { removeData: boolean }): Promise<void> {
    this.enter("remove");
    const name = sandboxName(user, slot);
    const sandbox = this.sandboxes.get(name);
    this.sandboxes.delete(name);
    if (sandbox) halt(sandbox);
    if (opts.removeData) this.volumes.delete(name);
  }

  async inspect(user: string, slot: Slot): Promise<SandboxInfo | undefined> {
    this.enter("inspect");
    const sandbox = this.sandboxes.get(sandboxName(user, slot));
    return sandbox && info(sandbox);
  }

  async list(): Promise<SandboxInfo[]> {
    this.enter("list");
    return [...this.sandboxes.values()].map(info);
  }

  /** A frozen sandbox keeps running but answers nothing, its health probe included, until thawed. */
  async freeze(user: string, slot: Slot): Promise<void> {
    this.enter("freeze");
    this.running(user, slot).frozen = true;
  }

  async thaw(user: string, slot: Slot): Promise<void> {
    this.enter("thaw");
    this.running(user, slot).frozen = false;
  }

  async *logs(user: string, slot: Slot, opts: LogOptions): AsyncIterable<string> {
    this.enter("logs");
    const sandbox = this.require(user, slot);
    let next = Math.max(0, sandbox.log.length - opts.tail);
    for (;;) {
      while (next < sandbox.log.length) yield sandbox.log[next++]!;
      if (!opts.follow || !sandbox.run || opts.signal?.aborted) return;
      const woken = new AbortController();
      const wake = () => woken.abort();
      sandbox.wake.add(wake);
      // The pause only bounds the wait: a wake-up or the caller's signal ends it.
      await pause(60_000, opts.signal ? AbortSignal.any([woken.signal, opts.signal]) : woken.signal);
      sandbox.wake.delete(wake);
    }
  }

  /** How often each runtime method was called, failed calls included; a snapshot. */
  get calls(): Readonly<Record<RuntimeMethod, number>> {
    return { ...this.counts };
  }

  /** While unavailable every runtime method fails with runtime_unavailable, as with Podman down. */
  setAvailable(available: boolean): void {
    this.available = available;
  }

  /**
   * Holds the next start (or restart) of user/slot until `release` is called: a slow boot the
   * test paces. `reached` resolves once that start is waiting. One hold per sandbox at a time.
   */
  holdStart(user: string, slot: Slot): { reached: Promise<void>; release: () => void } {
    const name = sandboxName(user, slot);
    if (this.holds.has(name)) throw new Error(`a start of ${name} is already held`);
    let arrive!: () => void;
    let release!: () => void;
    const reached = new Promise<void>((resolve) => (arrive = resolve));
    this.holds.set(name, { arrive, released: new Promise<void>((resolve) => (release = resolve)) });
    return { reached, release };
  }

  /** The sandbox's process exits on its own; the sandbox stays defined and can start again. */
  crash(user: string, slot: Slot, exitCode = 1): void {
    const sandbox = this.require(user, slot);
    if (!sandbox.run) throw new Error(`${sandboxName(user, slot)} is not running`);
    print(sandbox, `exited with code ${exitCode}`);
    halt(sandbox);
  }

  /** Whether whatever runs in user/slot, now or later, answers its health probe; healthy by default. */
  setHealthy(user: string, slot: Slot, healthy: boolean): void {
    const name = sandboxName(user, slot);
    if (healthy) this.unhealthy.delete(name);
    else this.unhealthy.add(name);
  }

  /** The environment the running sandbox was started with. */
  envOf(user: string, slot: Slot): Record<string, string> {
    const { run } = this.require(user, slot);
    if (!run) throw new Error(`${sandboxName(user, slot)} is not running`);
    return { ...run.env };
  }

  /** The sandbox's data (what it keeps under DATA_DIR), path to content; writable by the test. */
  data(user: string, slot: Slot): Map<string, string> {
    const volume = this.volumes.get(sandboxName(user, slot));
    if (!volume) throw notFound(user, slot);
    return volume;
  }

  private enter(method: RuntimeMethod): void {
    this.counts[method]++;
    if (!this.available) throw new HypervisorError("runtime_unavailable", "the fake runtime is unavailable");
  }

  private require(user: string, slot: Slot): FakeSandbox {
    const sandbox = this.sandboxes.get(sandboxName(user, slot));
    if (!sandbox) throw notFound(user, slot);
    return sandbox;
  }

  private running(user: string, slot: Slot): NonNullable<FakeSandbox["run"]> {
    const { run } = this.require(user, slot);
    if (!run) throw notFound(user, slot);
    return run;
  }

  private async boot(user: string, slot: Slot): Promise<SandboxInfo> {
    const name = sandboxName(user, slot);
    const current = this.require(user, slot);
    if (current.run) return info(current);
    const hold = this.holds.get(name);
    if (hold) {
      this.holds.delete(name);
      hold.arrive();
      await hold.released;
    }
    // Looked up again: the sandbox may have been removed, or started by another call, meanwhile.
    const sandbox = this.require(user, slot);
    if (!sandbox.run) {
      const port = this.nextPort++;
      sandbox.run = { port, env: sandboxEnv(sandbox.spec, port, `/fake/${name}/data`), startedAt: new Date().toISOString() };
    }
    return info(sandbox);
  }

  /** Nothing running at the endpoint reads as a refused connection; a probe is logged as a GET. */
  private answerHealth(endpoint: Endpoint): HealthAnswer {
    const sandbox = endpoint.host === HOST ? [...this.sandboxes.values()].find((s) => s.run?.port === endpoint.port) : undefined;
    if (!sandbox) return { healthy: false, said: "connection refused (nothing listens on its port yet)" };
    // A frozen sandbox answers nothing: the probe's connection waits until it times out.
    if (sandbox.run?.frozen) return { healthy: false, said: "no answer (the sandbox is frozen)" };
    const healthy = !this.unhealthy.has(sandboxName(sandbox.spec.user, sandbox.spec.slot));
    print(sandbox, `GET /health ${healthy ? 200 : 503}`);
    return { healthy, said: healthy ? "HTTP 200" : "HTTP 503: set unhealthy by the test" };
  }
}

function print(sandbox: FakeSandbox, line: string): void {
  sandbox.log.push(line);
  for (const wake of sandbox.wake) wake();
}

/** The sandbox's process is gone: readers following its log reach the end. */
function halt(sandbox: FakeSandbox): void {
  sandbox.run = undefined;
  for (const wake of sandbox.wake) wake();
}

function info(sandbox: FakeSandbox): SandboxInfo {
  const { user, slot, generation } = sandbox.spec;
  const { run } = sandbox;
  return {
    id: sandbox.id,
    name: sandboxName(user, slot),
    user,
    slot,
    generationId: generation.id,
    running: run !== undefined,
    endpoint: run && { host: HOST, port: run.port },
    startedAt: run?.startedAt,
    ...(run?.frozen ? { frozen: true } : {}),
  };
}

import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, readFileSync, renameSync, statSync } from "node:fs";
import { mkdir, readFile, readdir, rm, writeFile, rename } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { HypervisorError } from "../errors.js";
import { notFound, sandboxEnv, sandboxName, type ContainerRuntime, type SandboxInfo, type SandboxSpec } from "./container-runtime.js";
import type { Slot } from "../../proxy/target.js";

/** What survives a hypervisor restart: enough to find and adopt the process again. */
interface ProcessRecord {
  spec: SandboxSpec;
  pid?: number;
  port?: number;
  startedAt?: string;
}

const LOG_ROTATE_BYTES = 10 * 1024 * 1024;
const BIND_HOST = "127.0.0.1";

/**
 * Sandboxes as child processes: the embedded default where no Podman is installed. Each runs
 * detached in its own process group with an allowlisted environment, so it outlives a
 * hypervisor restart and is adopted again through its record and /proc. It offers no network
 * isolation between sandboxes; that is what the podman runtime is for.
 */
export class ProcessRuntime implements ContainerRuntime {
  readonly kind = "process";
  private readonly children = new Map<number, ChildProcess>();

  constructor(private readonly root: string) {}

  async ping(): Promise<void> {
    await mkdir(this.root, { recursive: true, mode: 0o700 });
  }

  async resolveImage(ref: string): Promise<{ imageId: string; version: string }> {
    throw new HypervisorError("bad_request", `the process runtime runs commands, not images (${ref})`);
  }

  async create(spec: SandboxSpec): Promise<SandboxInfo> {
    if (!spec.generation.command?.length) {
      throw new HypervisorError("bad_request", `generation ${spec.generation.id} has no command for the process runtime`);
    }
    const dir = this.dir(spec.user, spec.slot);
    if (await this.read(spec.user, spec.slot)) {
      throw new HypervisorError("conflict", `sandbox ${sandboxName(spec.user, spec.slot)} already exists`);
    }
    await mkdir(join(dir, "data"), { recursive: true, mode: 0o700 });
    await this.write(spec.user, spec.slot, { spec });
    return this.info({ spec }, false);
  }

  async start(user: string, slot: Slot): Promise<SandboxInfo> {
    const record = await this.read(user, slot);
    if (!record) throw notFound(user, slot);
    if (record.pid && this.alive(record)) return this.info(record, true);
    const dir = this.dir(user, slot);
    const port = await freePort();
    const logPath = join(dir, "sandbox.log");
    rotate(logPath);
    const log = openSync(logPath, "a", 0o600);
    const [command, ...args] = record.spec.generation.command!;
    let child: ChildProcess;
    try {
      // HOST keeps a process sandbox on loopback; containers bind their own network namespace.
      const env = { ...sandboxEnv(record.spec, port, join(dir, "data")), HOST: BIND_HOST };
      child = spawn(command!, args, { cwd: join(dir, "data"), env, detached: true, stdio: ["ignore", log, log] });
    } finally {
      closeSync(log);
    }
    const pid = await new Promise<number>((resolve, reject) => {
      child.once("spawn", () => resolve(child.pid!));
      child.once("error", (err) => reject(new HypervisorError("internal", `cannot start ${command}: ${err.message}`)));
    });
    this.children.set(pid, child);
    child.once("exit", () => this.children.delete(pid));
    child.unref();
    const started: ProcessRecord = { spec: record.spec, pid, port, startedAt: new Date().toISOString() };
    await this.write(user, slot, started);
    return this.info(started, true);
  }

  async stop(user: string, slot: Slot, timeoutMs: number): Promise<void> {
    const record = await this.read(user, slot);
    if (!record) throw notFound(user, slot);
    if (record.pid && this.alive(record)) {
      const pid = record.pid;
      // Signal the whole group: a sandbox's own children must not outlive it.
      signal(-pid, "SIGTERM");
      if (!(await this.waitGone(record, timeoutMs))) {
        signal(-pid, "SIGKILL");
        await this.waitGone(record, 5000);
      }
    }
    await this.write(user, slot, { spec: record.spec });
  }

  async restart(user: string, slot: Slot, timeoutMs: number): Promise<SandboxInfo> {
    await this.stop(user, slot, timeoutMs);
    return this.start(user, slot);
  }

  async remove(user: string, slot: Slot, opts: { removeData: boolean }): Promise<void> {
    const record = await this.read(user, slot);
    if (!record) return;
    await this.stop(user, slot, 10_000);
    const dir = this.dir(user, slot);
    if (opts.removeData) {
      await rm(dir, { recursive: true, force: true });
    } else {
      await rm(join(dir, "sandbox.json"), { force: true });
    }
  }

  async inspect(user: string, slot: Slot): Promise<SandboxInfo | undefined> {
    const record = await this.read(user, slot);
    return record && this.info(record, this.alive(record));
  }

  async list(): Promise<SandboxInfo[]> {
    let entries: string[];
    try {
      entries = await readdir(this.root);
    } catch {
      return [];
    }
    const infos: SandboxInfo[] = [];
    for (const entry of entries) {
      const m = /^(.+)-([ab])$/.exec(entry);
      if (!m) continue;
      const info = await this.inspect(m[1]!, m[2] as Slot);
      if (info) infos.push(info);
    }
    return infos;
  }

  async logs(user: string, slot: Slot, tail: number): Promise<string> {
    if (!(await this.read(user, slot))) throw notFound(user, slot);
    const text = await readFile(join(this.dir(user, slot), "sandbox.log"), "utf8").catch(() => "");
    return text
      .split("\n")
      .slice(-tail - 1)
      .join("\n");
  }

  private dir(user: string, slot: Slot): string {
    return join(this.root, `${user}-${slot}`);
  }

  private async read(user: string, slot: Slot): Promise<ProcessRecord | undefined> {
    try {
      return JSON.parse(await readFile(join(this.dir(user, slot), "sandbox.json"), "utf8")) as ProcessRecord;
    } catch {
      return undefined;
    }
  }

  /** Write-then-rename so a crash never leaves a torn record behind. */
  private async write(user: string, slot: Slot, record: ProcessRecord): Promise<void> {
    const path = join(this.dir(user, slot), "sandbox.json");
    await writeFile(`${path}.tmp`, JSON.stringify(record), { mode: 0o600 });
    await rename(`${path}.tmp`, path);
  }

  /**
   * A PID alone can be reused after the sandbox died; the process must also carry this
   * sandbox's DATA_DIR in its environment to count as ours.
   */
  private alive(record: ProcessRecord): boolean {
    if (!record.pid) return false;
    const child = this.children.get(record.pid);
    if (child) return child.exitCode === null && child.signalCode === null;
    try {
      const environ = readFileSync(`/proc/${record.pid}/environ`, "latin1");
      const stat = readFileSync(`/proc/${record.pid}/stat`, "latin1");
      // A zombie (state Z) has exited; only its parent can reap it.
      if (/^\d+ \(.*\) Z/.test(stat)) return false;
      return environ.split("\0").includes(`DATA_DIR=${join(this.dir(record.spec.user, record.spec.slot), "data")}`);
    } catch {
      return false;
    }
  }

  private async waitGone(record: ProcessRecord, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
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
      endpoint: running && record.port ? { host: BIND_HOST, port: record.port } : undefined,
      startedAt: running ? record.startedAt : undefined,
    };
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ESRCH") throw err;
  }
}

function rotate(path: string): void {
  try {
    if (statSync(path).size > LOG_ROTATE_BYTES) renameSync(path, `${path}.1`);
  } catch {
    // no log yet
  }
}

/** Asks the kernel for an unused loopback port. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, BIND_HOST, () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

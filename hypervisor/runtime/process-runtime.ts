import { execFile, spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, openSync, readdirSync, readFileSync, renameSync, statSync } from "node:fs";
import {
  chmod,
  copyFile,
  lchown,
  lstat,
  mkdir,
  open,
  readFile,
  truncate,
  type FileHandle,
  readdir,
  readlink,
  realpath,
  rename,
  rm,
  stat,
  writeFile,
} from "node:fs/promises";
import { createServer } from "node:net";
import { dirname, isAbsolute, join, relative, sep } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { HypervisorError } from "../errors.js";
import { notFound, sandboxEnv, sandboxName, type ContainerRuntime, type SandboxInfo, type SandboxSpec } from "./container-runtime.js";
import type { Slot } from "../../proxy/target.js";
import { LineSplitter, pause, type LogOptions } from "./log-lines.js";

/** What survives a hypervisor restart: enough to find and adopt the process again. */
interface ProcessRecord {
  spec: SandboxSpec;
  pid?: number;
  port?: number;
  startedAt?: string;
  /**
   * Contained: bubblewrap's init of the sandbox's pid namespace, whose process group the
   * sandbox runs in and whose death ends every process the sandbox started. Uncontained, the
   * sandbox leads a process group of its own.
   */
  init?: number;
}

export interface ProcessRuntimeOptions {
  /** The runtime's own records (pid, port, uid claims) and the sandboxes' logs: in the state dir. */
  recordsDir: string;
  /** One data directory per sandbox, the only place it may write: outside the state dir. */
  dataDir: string;
  /** What no sandbox may see, even read-only: the state dir, the operator socket, token files. */
  protectedPaths?: string[];
  /** The bubblewrap binary; tests point it at a missing file to stand for a host without it. */
  bwrap?: string;
}

/** How far this host lets the runtime confine its sandboxes (DESIGN §5a), found once at start. */
export interface Containment {
  /** Own mount, pid, ipc and uts namespaces; only the data dir writable, the command's files read-only. */
  namespaces: boolean;
  /** Each sandbox runs as a uid of its own (the daemon is root); otherwise as the daemon's uid. */
  ownUid: boolean;
  /** Sandboxes cannot open connections to this host's own addresses (its loopback listeners). */
  loopbackFenced: boolean;
  /** Why any of the above is missing, for the start-up log. */
  reasons: string[];
}

/**
 * Sandbox uids and gids, one pair per sandbox: 0x70000000 up, a range systemd's "Users,
 * Groups, UIDs and GIDs on systemd Systems" leaves unused (below 2^31, clear of its container
 * and foreign ranges). They need no /etc/passwd entry. The first is the start-up probe's.
 */
export const SANDBOX_UID_BASE = 0x7000_0000;
export const SANDBOX_UID_COUNT = 0x1_0000;
const PROBE_UID = SANDBOX_UID_BASE;

const LOG_ROTATE_BYTES = 10 * 1024 * 1024;
const LOG_READ_BYTES = 64 * 1024;
/** How often a followed log is looked at for new output. */
const LOG_POLL_MS = 200;
/** How often running sandboxes' logs are checked against LOG_ROTATE_BYTES. */
const LOG_TRIM_EVERY_MS = 60_000;
/** From bubblewrap's report to the command's exec: mounts and namespaces take milliseconds. */
const EXEC_TIMEOUT_MS = 10_000;
const BIND_HOST = "127.0.0.1";
const FIREWALL_CHAIN = "HV-SANDBOX-OUT";
const run = promisify(execFile);

/** Directories every sandbox sees read-only: system code, public by nature. */
const SYSTEM_DIRS = ["/usr", "/nix/store"];
/** Merged-/usr links (or, on older layouts, directories) at the root. */
const ROOT_LINKS = ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/** What a program needs of /etc to load libraries, resolve names and verify TLS: no user database, no private keys. */
const ETC_FILES = [
  "/etc/ld.so.cache",
  "/etc/alternatives",
  "/etc/hosts",
  "/etc/nsswitch.conf",
  "/etc/resolv.conf",
  "/etc/localtime",
  "/etc/ssl/certs",
  "/etc/ssl/openssl.cnf",
];

/**
 * Sandboxes as child processes: the embedded default where no Podman is installed. Each runs
 * detached with an allowlisted environment, so it outlives a hypervisor restart and is adopted
 * again through its record and /proc.
 *
 * Where the host allows it (bubblewrap, and root or unprivileged user namespaces) each sandbox
 * is contained (DESIGN §5a): its own uid, mount, pid, ipc and uts namespaces, only its data
 * directory writable and its command's files read-only; as root its uid is also fenced off the
 * host's own addresses. It still shares the host's network namespace: the podman runtime is the
 * multi-tenant answer.
 */
export class ProcessRuntime implements ContainerRuntime {
  readonly kind = "process";
  private readonly children = new Map<number, ChildProcess>();
  private readonly recordsDir: string;
  private readonly dataDir: string;
  private readonly protectedPaths: string[];
  private readonly bwrap: string;
  private prepared: Promise<Containment> | undefined;
  /** Per generation command: the read-only binds it needs, computed once (generations are immutable). */
  private readonly commandBinds = new Map<string, Promise<Bind[]>>();

  constructor(options: ProcessRuntimeOptions) {
    this.recordsDir = options.recordsDir;
    this.dataDir = options.dataDir;
    this.protectedPaths = [options.recordsDir, ...(options.protectedPaths ?? [])];
    this.bwrap = options.bwrap ?? "/usr/bin/bwrap";
  }

  /**
   * Readies the runtime once: its directories, data left in the layout before data dirs moved
   * out of the state dir, and what containment this host allows. The daemon calls it before
   * serving; every start awaits it.
   */
  prepare(): Promise<Containment> {
    this.prepared ??= (async () => {
      await mkdir(this.recordsDir, { recursive: true, mode: 0o700 });
      // Owner only: no sandbox uid may enter, let alone list, the root of everyone's data.
      await mkdir(this.dataDir, { recursive: true, mode: 0o700 });
      await chmod(this.dataDir, 0o700);
      await this.migrateData();
      // Sandboxes write their log themselves and outlive the daemon, so it is bounded from outside.
      setInterval(() => void this.trimLogs(), LOG_TRIM_EVERY_MS).unref();
      return this.probeContainment();
    })();
    return this.prepared;
  }

  /**
   * Keeps each sandbox's log within LOG_ROTATE_BYTES while it runs: a log past it is copied to
   * `sandbox.log.1` and emptied in place (the sandbox appends, so its next line lands at the
   * start). A line written between the copy and the cut is lost; a start rotates by rename.
   */
  async trimLogs(): Promise<void> {
    for (const entry of await readdir(this.recordsDir).catch(() => [] as string[])) {
      const path = join(this.recordsDir, entry, "sandbox.log");
      const size = await stat(path).then(
        (s) => s.size,
        () => 0,
      );
      if (size <= LOG_ROTATE_BYTES) continue;
      await copyFile(path, `${path}.1`);
      await truncate(path, 0);
    }
  }

  async ping(): Promise<void> {
    await mkdir(this.recordsDir, { recursive: true, mode: 0o700 });
  }

  async resolveImage(ref: string): Promise<{ imageId: string; version: string }> {
    throw new HypervisorError("bad_request", `the process runtime runs commands, not images (${ref})`);
  }

  async create(spec: SandboxSpec): Promise<SandboxInfo> {
    if (!spec.generation.command?.length) {
      throw new HypervisorError("bad_request", `generation ${spec.generation.id} has no command for the process runtime`);
    }
    await this.prepare();
    if (await this.read(spec.user, spec.slot)) {
      throw new HypervisorError("conflict", `sandbox ${sandboxName(spec.user, spec.slot)} already exists`);
    }
    await mkdir(this.recordDir(spec.user, spec.slot), { recursive: true, mode: 0o700 });
    await mkdir(this.sandboxData(spec.user, spec.slot), { recursive: true, mode: 0o700 });
    await this.write(spec.user, spec.slot, { spec });
    return this.info({ spec }, false);
  }

  async start(user: string, slot: Slot): Promise<SandboxInfo> {
    const containment = await this.prepare();
    const record = await this.read(user, slot);
    if (!record) throw notFound(user, slot);
    if (record.pid && this.alive(record)) return this.info(record, true);
    const dataDir = this.sandboxData(user, slot);
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    const port = await freePort();
    // HOST keeps a process sandbox on loopback; containers bind their own network namespace.
    const env = { ...sandboxEnv(record.spec, port, dataDir), HOST: BIND_HOST };
    const logPath = join(this.recordDir(user, slot), "sandbox.log");
    rotate(logPath);
    const { pid, init, child } = containment.namespaces
      ? await this.spawnContained(record.spec, dataDir, env, logPath, containment.ownUid ? await this.uidFor(user, slot, dataDir) : undefined)
      : await spawnPlain(record.spec.generation.command!, dataDir, env, logPath);
    this.children.set(pid, child);
    child.once("exit", () => this.children.delete(pid));
    child.unref();
    const started: ProcessRecord = { spec: record.spec, pid, init, port, startedAt: new Date().toISOString() };
    await this.write(user, slot, started);
    return this.info(started, true);
  }

  async stop(user: string, slot: Slot, timeoutMs: number): Promise<void> {
    const record = await this.read(user, slot);
    if (!record) throw notFound(user, slot);
    await this.kill(record, timeoutMs);
    await this.write(user, slot, { spec: record.spec });
  }

  async restart(user: string, slot: Slot, timeoutMs: number): Promise<SandboxInfo> {
    await this.stop(user, slot, timeoutMs);
    return this.start(user, slot);
  }

  async remove(user: string, slot: Slot, opts: { removeData: boolean }): Promise<void> {
    const record = await this.read(user, slot);
    // Data an earlier removal kept has no record left; removeData still removes it.
    if (record) await this.stop(user, slot, 10_000);
    else if (!opts.removeData) return;
    if (opts.removeData) {
      const dataDir = this.sandboxData(user, slot);
      const owner = await stat(dataDir).then(
        (s) => s.uid,
        () => undefined,
      );
      await rm(dataDir, { recursive: true, force: true });
      // The uid goes with the data it owned.
      if (owner !== undefined && (await this.claimant(owner)) === sandboxName(user, slot)) await rm(this.claimPath(owner), { force: true });
      await rm(this.recordDir(user, slot), { recursive: true, force: true });
    } else {
      await rm(join(this.recordDir(user, slot), "sandbox.json"), { force: true });
    }
  }

  async inspect(user: string, slot: Slot): Promise<SandboxInfo | undefined> {
    const record = await this.read(user, slot);
    return record && this.info(record, this.alive(record));
  }

  async list(): Promise<SandboxInfo[]> {
    let entries: string[];
    try {
      entries = await readdir(this.recordsDir);
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

  /**
   * The sandbox's output file (stdout and stderr share it), read from where its last `tail` lines
   * begin; following polls it, since the sandbox writes it directly and outlives the daemon.
   */
  async *logs(user: string, slot: Slot, opts: LogOptions): AsyncIterable<string> {
    if (!(await this.read(user, slot))) throw notFound(user, slot);
    const path = join(this.recordDir(user, slot), "sandbox.log");
    const file = await open(path, "r").catch(() => undefined);
    if (!file) return;
    try {
      let offset = await tailOffset(file, opts.tail);
      const splitter = new LineSplitter();
      for (;;) {
        // Read what is there before judging whether the sandbox still runs: its last words count.
        const record = opts.follow ? await this.read(user, slot) : undefined;
        const running = record !== undefined && this.alive(record);
        const { size } = await file.stat();
        // Cut while followed (a start rotates a large log away): start again at its beginning.
        if (size < offset) offset = 0;
        while (offset < size) {
          const chunk = Buffer.alloc(Math.min(LOG_READ_BYTES, size - offset));
          const { bytesRead } = await file.read(chunk, 0, chunk.length, offset);
          if (bytesRead === 0) break;
          offset += bytesRead;
          yield* splitter.push(chunk.subarray(0, bytesRead));
        }
        if (!running || opts.signal?.aborted) break;
        await pause(LOG_POLL_MS, opts.signal);
      }
      yield* splitter.end();
    } finally {
      await file.close();
    }
  }

  private recordDir(user: string, slot: Slot): string {
    return join(this.recordsDir, `${user}-${slot}`);
  }

  private sandboxData(user: string, slot: Slot): string {
    return join(this.dataDir, `${user}-${slot}`);
  }

  /**
   * bubblewrap, started so that it outlives the daemon (no --die-with-parent: the daemon adopts
   * running sandboxes after a restart). Its init (pid 1 of the sandbox's pid namespace) starts
   * the command and reaps orphans; the pid recorded is the command's, whose environment
   * identifies it on adoption, and SIGTERM reaches it as it reached an uncontained sandbox.
   */
  private async spawnContained(
    spec: SandboxSpec,
    dataDir: string,
    env: Record<string, string>,
    logPath: string,
    uid: number | undefined,
  ): Promise<{ pid: number; init: number; child: ChildProcess }> {
    const command = spec.generation.command!;
    const args = await this.sandboxArgs(command, { uid, hostname: sandboxName(spec.user, spec.slot), dataDir, env, reportPid: true });
    const log = openSync(logPath, "a", 0o600);
    let child: ChildProcess;
    try {
      // bubblewrap itself gets an empty environment; the sandbox gets the allowlist through --setenv.
      child = spawn(this.bwrap, args, { cwd: "/", env: {}, detached: true, stdio: ["ignore", log, log, "pipe"] });
    } finally {
      closeSync(log);
    }
    const failed = (why: string) => new HypervisorError("internal", `cannot start ${command[0]} in bubblewrap: ${why}; see the sandbox's logs`);
    const info = await new Promise<string>((resolve, reject) => {
      let text = "";
      const stream = child.stdio[3]!;
      child.once("error", (err) => reject(failed(err.message)));
      stream.on("data", (chunk: Buffer) => (text += chunk.toString("utf8")));
      stream.once("end", () => resolve(text));
    });
    const init = (JSON.parse(info || "{}") as { "child-pid"?: number })["child-pid"];
    if (!init) throw failed(`bubblewrap exited with ${await exitOf(child)}`);
    // The init reports while it still sets the sandbox up: wait for the command it forks, with
    // its environment, so the record identifies the sandbox from the first moment.
    const identity = `DATA_DIR=${dataDir}`;
    const deadline = Date.now() + EXEC_TIMEOUT_MS;
    for (;;) {
      const pid = childrenOf(init).find((p) => environHas(p, identity));
      if (pid) return { pid, init, child };
      if (child.exitCode !== null || child.signalCode !== null) throw failed(`bubblewrap exited with ${await exitOf(child)}`);
      if (Date.now() > deadline) throw failed(`no sandbox process after ${EXEC_TIMEOUT_MS} ms`);
      await sleep(2);
    }
  }

  /**
   * The whole bubblewrap command line: namespaces, the system's files and the command's
   * read-only, the data dir read-write, a private /proc, /dev and /tmp, the
   * environment. As root, bubblewrap sets up the namespaces and setpriv(1) drops to the
   * sandbox's uid, with no capabilities and no_new_privs, before the command runs; otherwise
   * bubblewrap runs unprivileged in a user namespace of the daemon's uid, in which the sandbox
   * may create no further one.
   */
  private async sandboxArgs(command: string[], layout: SandboxLayout): Promise<string[]> {
    const { uid, dataDir } = layout;
    const writable: Bind[] = dataDir ? [{ src: dataDir, dest: dataDir, writable: true }] : [];
    const binds = [...(await systemBinds()), ...(await this.bindsOf(command)), ...writable];
    const drop =
      uid === undefined
        ? []
        : [SETPRIV, `--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"];
    return [
      ...(uid === undefined ? ["--unshare-user", "--disable-userns"] : []),
      "--unshare-ipc",
      "--unshare-pid",
      "--unshare-uts",
      "--unshare-cgroup-try",
      "--hostname",
      layout.hostname,
      // A session of its own: no TIOCSTI into a terminal it might have inherited.
      "--new-session",
      ...(await rootLinks()),
      "--proc",
      "/proc",
      "--dev",
      "/dev",
      "--perms",
      "1777",
      "--tmpfs",
      "/tmp",
      ...bindArgs(binds),
      ...(dataDir ? ["--chdir", dataDir] : []),
      "--clearenv",
      ...Object.entries(layout.env).flatMap(([k, v]) => ["--setenv", k, v]),
      ...(layout.reportPid ? ["--info-fd", "3"] : []),
      "--",
      ...drop,
      ...command,
    ];
  }

  private bindsOf(command: string[]): Promise<Bind[]> {
    const key = JSON.stringify(command);
    let binds = this.commandBinds.get(key);
    if (!binds) {
      binds = this.commandFiles(command);
      this.commandBinds.set(key, binds);
      binds.catch(() => this.commandBinds.delete(key));
    }
    return binds;
  }

  /**
   * What a generation's command needs beyond the system's files: its executable, and for each
   * absolute path among its arguments (a script) that directory with the package scope Node
   * resolves it in, the nearest package.json and every node_modules above it. Refused when any
   * of them would show the sandbox something of the hypervisor's or another sandbox's data.
   */
  private async commandFiles(command: string[]): Promise<Bind[]> {
    const [executable, ...args] = command;
    const paths: string[] = [];
    if (executable && isAbsolute(executable)) paths.push(executable);
    for (const arg of args.filter((a) => isAbsolute(a))) {
      const found = await stat(arg).catch(() => undefined);
      if (!found) continue;
      const dir = found.isDirectory() ? arg : dirname(arg);
      paths.push(dir);
      const scope = ancestors(dir);
      const packageJson = scope.map((d) => join(d, "package.json")).find(exists);
      if (packageJson) paths.push(packageJson);
      paths.push(...scope.map((d) => join(d, "node_modules")).filter(exists));
    }
    const binds: Bind[] = [];
    for (const path of [...new Set(paths)].sort()) {
      if (await systemVisible(path)) continue;
      // Inside a directory bound already: visible with it.
      if (binds.some((b) => within(b.dest, path))) continue;
      await this.refuseProtected(path);
      binds.push({ src: path, dest: path });
    }
    return binds;
  }

  /** A read-only bind of `path` must not show, nor lie inside, anything the sandbox may not see. */
  private async refuseProtected(path: string): Promise<void> {
    const forms = async (p: string) => [p, await realpath(p).catch(() => p)];
    for (const candidate of await forms(path)) {
      for (const guarded of [this.dataDir, ...this.protectedPaths]) {
        for (const g of await forms(guarded)) {
          if (within(candidate, g) || within(g, candidate)) {
            throw new HypervisorError(
              "bad_request",
              `a sandbox would see ${g} through ${path}: move the generation's files out of the hypervisor's directories`,
            );
          }
        }
      }
    }
  }

  /**
   * The sandbox's uid: the owner of its data directory when that uid is claimed for it, else a
   * newly claimed one, to which the data directory (and, for data from before, all it holds)
   * is handed. Claims are files created exclusively, so two sandboxes never share a uid.
   */
  private async uidFor(user: string, slot: Slot, dataDir: string): Promise<number> {
    const name = sandboxName(user, slot);
    const owner = (await stat(dataDir)).uid;
    if ((await this.claimant(owner)) === name) return owner;
    const uid = await this.claimUid(name);
    if ((await readdir(dataDir)).length === 0) await lchown(dataDir, uid, uid);
    // GNU chown -R without -L follows no symbolic link (-P), and -h changes links themselves.
    else await run("chown", ["-hR", `${uid}:${uid}`, "--", dataDir]);
    await chmod(dataDir, 0o700);
    return uid;
  }

  private async claimUid(name: string): Promise<number> {
    await mkdir(join(this.recordsDir, "uids"), { recursive: true, mode: 0o700 });
    // Start where the name hashes to, so a sandbox's uid is usually the same on every host.
    const slots = SANDBOX_UID_COUNT - 1;
    const start = createHash("sha256").update(name).digest().readUInt32BE(0) % slots;
    for (let i = 0; i < slots; i++) {
      const uid = PROBE_UID + 1 + ((start + i) % slots);
      try {
        await writeFile(this.claimPath(uid), name, { flag: "wx", mode: 0o600 });
        return uid;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      }
    }
    throw new HypervisorError("capacity_exhausted", `all ${slots} sandbox uids are claimed`);
  }

  private claimPath(uid: number): string {
    return join(this.recordsDir, "uids", String(uid));
  }

  private async claimant(uid: number): Promise<string | undefined> {
    if (uid <= PROBE_UID || uid >= SANDBOX_UID_BASE + SANDBOX_UID_COUNT) return undefined;
    return readFile(this.claimPath(uid), "utf8").catch(() => undefined);
  }

  /**
   * Data once lived in the state dir, at `<records>/<sandbox>/data`, where any sandbox could
   * walk up to the database. It moves to the data dir by rename; a sandbox still running from
   * there (uncontained, from before) is stopped first. Nothing is copied: across file systems,
   * or onto data already at the new place, the daemon refuses to start and says what to do.
   */
  private async migrateData(): Promise<void> {
    for (const entry of await readdir(this.recordsDir)) {
      const m = /^(.+)-([ab])$/.exec(entry);
      const old = join(this.recordsDir, entry, "data");
      if (
        !m ||
        !(await stat(old).then(
          (s) => s.isDirectory(),
          () => false,
        ))
      )
        continue;
      const [user, slot] = [m[1]!, m[2] as Slot];
      const target = this.sandboxData(user, slot);
      const record = await this.read(user, slot);
      if (record?.pid && environHas(record.pid, `DATA_DIR=${old}`)) {
        await this.kill({ spec: record.spec, pid: record.pid }, 10_000, `DATA_DIR=${old}`);
        await this.write(user, slot, { spec: record.spec });
      }
      if (exists(target)) {
        throw new HypervisorError("conflict", `sandbox data at both ${old} and ${target}: keep one (the other may be moved away), then start again`);
      }
      try {
        await rename(old, target);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EXDEV") throw err;
        throw new HypervisorError(
          "internal",
          `cannot move sandbox data from ${old} to ${target} across file systems: with the hypervisor stopped, \`mv\` it there by hand, or set HYPERVISOR_SANDBOX_DATA_DIR to a directory on the state dir's file system`,
        );
      }
    }
  }

  private async probeContainment(): Promise<Containment> {
    const uncontained = (reason: string): Containment => ({ namespaces: false, ownUid: false, loopbackFenced: false, reasons: [reason] });
    if (!(await executable(this.bwrap))) return uncontained(`bubblewrap is not installed at ${this.bwrap} (apt-get install bubblewrap)`);
    const root = process.getuid?.() === 0;
    if (root && !(await executable(SETPRIV))) return uncontained(`setpriv is not installed at ${SETPRIV} (util-linux)`);
    try {
      for (const bind of await systemBinds()) await this.refuseProtected(bind.src);
      const args = await this.sandboxArgs([process.execPath, "--version"], { uid: root ? PROBE_UID : undefined, hostname: "probe", env: {}, reportPid: false });
      await run(this.bwrap, args, { env: {}, timeout: 10_000 });
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      return uncontained(`bubblewrap cannot contain a sandbox here: ${(e.stderr || e.message).trim()}`);
    }
    const reasons: string[] = [];
    if (!root) reasons.push("the daemon is not root: sandboxes run as its uid, inside user namespaces");
    const fence = root ? await fenceLoopback() : "the daemon is not root: it cannot fence sandboxes off the host's own addresses";
    if (fence) reasons.push(fence);
    return { namespaces: true, ownUid: root, loopbackFenced: !fence, reasons };
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

  private async read(user: string, slot: Slot): Promise<ProcessRecord | undefined> {
    try {
      return JSON.parse(await readFile(join(this.recordDir(user, slot), "sandbox.json"), "utf8")) as ProcessRecord;
    } catch {
      return undefined;
    }
  }

  /** Write-then-rename so a crash never leaves a torn record behind. */
  private async write(user: string, slot: Slot, record: ProcessRecord): Promise<void> {
    const path = join(this.recordDir(user, slot), "sandbox.json");
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
      endpoint: running && record.port ? { host: BIND_HOST, port: record.port } : undefined,
      startedAt: running ? record.startedAt : undefined,
    };
  }
}

interface SandboxLayout {
  /** The sandbox's own uid (the daemon is root), or none: a user namespace of the daemon's uid. */
  uid: number | undefined;
  hostname: string;
  /** Bound read-write and the working directory; the start-up probe has none. */
  dataDir?: string;
  env: Record<string, string>;
  /** bubblewrap writes the sandbox's pid, as JSON, to fd 3. */
  reportPid: boolean;
}

interface Bind {
  src: string;
  dest: string;
  writable?: boolean;
}

const SETPRIV = "/usr/bin/setpriv";

/** Uncontained, as before containment: the daemon's uid and view, in a process group of its own. */
async function spawnPlain(
  command: string[],
  dataDir: string,
  env: Record<string, string>,
  logPath: string,
): Promise<{ pid: number; init: undefined; child: ChildProcess }> {
  const [executable, ...args] = command;
  const log = openSync(logPath, "a", 0o600);
  let child: ChildProcess;
  try {
    child = spawn(executable!, args, { cwd: dataDir, env, detached: true, stdio: ["ignore", log, log] });
  } finally {
    closeSync(log);
  }
  const pid = await new Promise<number>((resolve, reject) => {
    child.once("spawn", () => resolve(child.pid!));
    child.once("error", (err) => reject(new HypervisorError("internal", `cannot start ${executable}: ${err.message}`)));
  });
  return { pid, init: undefined, child };
}

/**
 * Binds, each after the directories leading to it: bubblewrap would create those 0700 as root,
 * closed to the sandbox's uid, so they are made world-traversable (0755) here.
 */
function bindArgs(binds: Bind[]): string[] {
  const made = new Set(["/", "/proc", "/dev", "/tmp"]);
  const args: string[] = [];
  for (const bind of binds) {
    for (const parent of ancestors(dirname(bind.dest)).reverse()) {
      if (made.has(parent)) continue;
      made.add(parent);
      args.push("--perms", "0755", "--dir", parent);
    }
    made.add(bind.dest);
    args.push(bind.writable ? "--bind" : "--ro-bind", bind.src, bind.dest);
  }
  return args;
}

let systemBindsFound: Promise<Bind[]> | undefined;
/** The system's code and the few files of /etc a program needs, as they exist on this host. */
function systemBinds(): Promise<Bind[]> {
  systemBindsFound ??= (async () => {
    const binds: Bind[] = [];
    for (const path of [...SYSTEM_DIRS, ...ETC_FILES]) if (exists(path)) binds.push({ src: path, dest: path });
    for (const path of ROOT_LINKS) {
      const found = await lstat(path).catch(() => undefined);
      if (found?.isDirectory()) binds.push({ src: path, dest: path });
    }
    return binds;
  })();
  return systemBindsFound;
}

/** Merged-/usr links at the root (/bin → usr/bin), recreated as links. */
async function rootLinks(): Promise<string[]> {
  const args: string[] = [];
  for (const path of ROOT_LINKS) {
    const found = await lstat(path).catch(() => undefined);
    if (found?.isSymbolicLink()) args.push("--symlink", await readlink(path), path);
  }
  return args;
}

/** Already visible through a system bind, by its own path and by what it resolves to. */
async function systemVisible(path: string): Promise<boolean> {
  const real = await realpath(path).catch(() => path);
  return SYSTEM_DIRS.some((dir) => within(dir, path)) && SYSTEM_DIRS.some((dir) => within(dir, real));
}

/**
 * Fences sandbox uids off this host's own addresses (iptables' owner match, OUTPUT chain):
 * replies on connections made to them pass, new connections to any local address are refused.
 * Idempotent: the chain is replaced atomically (iptables-restore --noflush) and jumped to once.
 * It stays when the daemon stops, as the sandboxes do. Returns why it could not, if so.
 */
async function fenceLoopback(): Promise<string | undefined> {
  const range = `${SANDBOX_UID_BASE}-${SANDBOX_UID_BASE + SANDBOX_UID_COUNT - 1}`;
  const rules = [
    "*filter",
    `:${FIREWALL_CHAIN} - [0:0]`,
    `-A ${FIREWALL_CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN`,
    `-A ${FIREWALL_CHAIN} -p tcp -m addrtype --dst-type LOCAL -j REJECT --reject-with tcp-reset`,
    `-A ${FIREWALL_CHAIN} -m addrtype --dst-type LOCAL -j REJECT`,
    "COMMIT",
    "",
  ].join("\n");
  const families = exists("/proc/net/if_inet6") ? ["iptables", "ip6tables"] : ["iptables"];
  for (const tool of families) {
    try {
      await runWithInput(`${tool}-restore`, ["-w", "--noflush"], rules);
      const jump = ["OUTPUT", "-m", "owner", "--uid-owner", range, "-j", FIREWALL_CHAIN];
      const present = await run(tool, ["-w", "-C", ...jump]).then(
        () => true,
        () => false,
      );
      if (!present) await run(tool, ["-w", "-I", ...jump]);
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      return `${tool} cannot fence sandboxes off the host's own addresses: ${(e.stderr || e.message).trim()}`;
    }
  }
  return undefined;
}

function runWithInput(command: string, args: string[], input: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["pipe", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.once("error", reject);
    child.once("close", (code) => (code === 0 ? resolve() : reject(Object.assign(new Error(`${command} exited with ${code}`), { stderr }))));
    child.stdin.end(input);
  });
}

/** Whether a live (not zombie) process has `entry` in its environment. */
function environHas(pid: number, entry: string): boolean {
  try {
    const environ = readFileSync(`/proc/${pid}/environ`, "latin1");
    const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
    // A zombie (state Z) has exited; only its parent can reap it.
    if (/^\d+ \(.*\) Z/.test(stat)) return false;
    return environ.split("\0").includes(entry);
  } catch {
    return false;
  }
}

/** Children of a process: the kernel's list (CONFIG_PROC_CHILDREN), else every process's parent. */
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "latin1").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    const found: number[] = [];
    for (const entry of readdirSync("/proc").filter((e) => /^\d+$/.test(e))) {
      try {
        // The parent is the 2nd field after the parenthesised command name, which may hold spaces.
        const stat = readFileSync(`/proc/${entry}/stat`, "latin1");
        if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid) found.push(Number(entry));
      } catch {
        // gone meanwhile
      }
    }
    return found;
  }
}

async function waitPidGone(pid: number, identity: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!environHas(pid, identity)) return true;
    await sleep(20);
  }
  return !environHas(pid, identity);
}

function exitOf(child: ChildProcess): Promise<string> {
  const describe = () => (child.signalCode ? `signal ${child.signalCode}` : `code ${child.exitCode}`);
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(describe());
  return new Promise((resolve) => child.once("exit", () => resolve(describe())));
}

async function executable(path: string): Promise<boolean> {
  return stat(path).then(
    (s) => s.isFile() && (s.mode & 0o111) !== 0,
    () => false,
  );
}

function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** `path` and each directory above it, nearest first. */
function ancestors(path: string): string[] {
  const out = [path];
  while (dirname(out.at(-1)!) !== out.at(-1)) out.push(dirname(out.at(-1)!));
  return out;
}

/** Whether `inner` is `outer` or lies below it, by path alone. */
function within(outer: string, inner: string): boolean {
  const rel = relative(outer, inner);
  return rel !== ".." && !rel.startsWith(`..${sep}`) && !isAbsolute(rel);
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

/** Where the last `tail` lines of the file begin, found by reading backwards from its end. */
async function tailOffset(file: FileHandle, tail: number): Promise<number> {
  const { size } = await file.stat();
  if (tail <= 0) return size;
  // A final line break ends the last line; it does not begin another.
  let newlines = 0;
  let end = size;
  const chunk = Buffer.alloc(LOG_READ_BYTES);
  while (end > 0) {
    const start = Math.max(0, end - chunk.length);
    const { bytesRead } = await file.read(chunk, 0, end - start, start);
    for (let i = bytesRead - 1; i >= 0; i--) {
      if (chunk[i] !== 0x0a || start + i === size - 1) continue;
      if (++newlines === tail) return start + i + 1;
    }
    end = start;
  }
  return 0;
}

/**
 * Ports handed to sandboxes lie below the kernel's ephemeral range, so no outgoing connection
 * (a health probe, a proxied request, any other program's) can take one between the check here
 * and the sandbox's own bind: with thousands of probes a second, a port the kernel picked from
 * that range was taken often enough to fail starts. Where nothing lies below it, the kernel picks.
 */
function sandboxPorts(): { low: number; high: number } | undefined {
  try {
    const ephemeralLow = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "latin1").trim().split(/\s+/)[0]);
    const low = Math.max(1024, Math.floor(ephemeralLow / 2));
    return ephemeralLow - low >= 1024 ? { low, high: ephemeralLow - 1 } : undefined;
  } catch {
    return undefined;
  }
}

const PORT_TRIES = 50;
/** A port handed out stays reserved this long: two starts at once never get the same one. */
const PORT_HOLD_MS = EXEC_TIMEOUT_MS + 5000;
const handedOut = new Map<number, number>();

/** An unused loopback port for a sandbox. */
async function freePort(): Promise<number> {
  const range = sandboxPorts();
  if (!range) return bindable(0);
  const now = Date.now();
  for (const [port, at] of handedOut) if (now - at > PORT_HOLD_MS) handedOut.delete(port);
  for (let i = 0; i < PORT_TRIES; i++) {
    const port = range.low + Math.floor(Math.random() * (range.high - range.low + 1));
    if (handedOut.has(port)) continue;
    const free = await bindable(port).then(
      () => true,
      () => false,
    );
    if (!free) continue;
    handedOut.set(port, now);
    return port;
  }
  return bindable(0);
}

/** Binds `port` (0: the kernel's choice) on loopback and releases it, answering the port. */
function bindable(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(port, BIND_HOST, () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

import { spawn, type ChildProcess } from "node:child_process";
import { lstat, readlink, realpath, stat } from "node:fs/promises";
import { dirname, isAbsolute, join } from "node:path";
import type { Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { HypervisorError } from "../../errors.js";
import { withoutCapabilities } from "../../capabilities.js";
import { inCgroups } from "./cgroups.js";
import { ancestors, exists, within } from "./files.js";
import { childrenOf, environHas, exitOf } from "./proc.js";
import { noUserNamespacesFilter } from "./seccomp.js";

/** From bubblewrap's report to the command's exec: mounts and namespaces take milliseconds. */
export const EXEC_TIMEOUT_MS = 10_000;
export const SETPRIV = "/usr/bin/setpriv";
/** Sets the sandbox's RLIMIT_NPROC (util-linux, as setpriv) before it drops to its uid. */
export const PRLIMIT = "/usr/bin/prlimit";
/** Where bubblewrap reads the seccomp program from: the descriptor after --info-fd's. */
const SECCOMP_FD = 4;
/** Joins a network namespace and execs bubblewrap in it: the pid stays bubblewrap's. */
const NSENTER = "/usr/bin/nsenter";

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

export interface SandboxLayout {
  /** The sandbox's own uid (the daemon is root), or none: a user namespace of the daemon's uid. */
  uid: number | undefined;
  hostname: string;
  /** Bound read-write and the working directory; the start-up probe has none. */
  dataDir?: string;
  env: Record<string, string>;
  /** bubblewrap writes the sandbox's pid, as JSON, to fd 3. */
  reportPid: boolean;
  /** Its /tmp at most (a tmpfs, charged to its memory); unset, the kernel's default. */
  tmpBytes?: number;
  /** RLIMIT_NPROC of its uid (only with a uid of its own): a last line behind its cgroup's pids limit. */
  nproc?: number;
}

interface Bind {
  src: string;
  dest: string;
  writable?: boolean;
}

export interface BubblewrapOptions {
  /** The bubblewrap binary. */
  path: string;
  /** What no sandbox may see, even read-only: every sandbox's data, the state dir, the operator socket. */
  guarded: string[];
}

/**
 * bubblewrap's side of containment: the command line that gives a sandbox its namespaces and
 * its view of the file system, and the start of one.
 */
export class Bubblewrap {
  readonly path: string;
  private readonly guarded: string[];
  /** Per generation command: the read-only binds it needs, computed once (generations are immutable). */
  private readonly commandBinds = new Map<string, Promise<Bind[]>>();
  private systemBindsFound: Promise<Bind[]> | undefined;
  private readonly noUserNamespaces = noUserNamespacesFilter();

  constructor(options: BubblewrapOptions) {
    this.path = options.path;
    this.guarded = options.guarded;
  }

  /**
   * bubblewrap, started so that it outlives the daemon (no --die-with-parent: the daemon adopts
   * running sandboxes after a restart). Its init (pid 1 of the sandbox's pid namespace) starts
   * the command and reaps orphans; the pid recorded is the command's, whose environment
   * identifies it on adoption, and SIGTERM reaches it as it reached an uncontained sandbox.
   * `netnsPath`: the sandbox's own network namespace, entered before bubblewrap runs (so its
   * network is ready before the command starts); otherwise the host's. `output`: its stdout and
   * stderr (the write end of its log's pipe). `cgroupProcs`: the
   * sandbox's groups, joined before anything else runs (./cgroups.ts).
   */
  async spawn(
    command: string[],
    layout: Omit<SandboxLayout, "reportPid"> & { dataDir: string },
    output: number,
    netnsPath?: string,
    cgroupProcs: string[] = [],
  ): Promise<{ pid: number; init: number; child: ChildProcess }> {
    const args = await this.args(command, { ...layout, reportPid: true });
    const argv = inCgroups(withoutCapabilities(netnsPath ? [NSENTER, `--net=${netnsPath}`, "--", this.path, ...args] : [this.path, ...args]), cgroupProcs);
    // bubblewrap itself gets an empty environment; the sandbox gets the allowlist through --setenv.
    const child = spawn(argv[0]!, argv.slice(1), {
      cwd: "/",
      env: {},
      detached: true,
      stdio: ["ignore", output, output, "pipe", this.filterFor(layout) ? "pipe" : "ignore"],
    });
    this.sendFilter(child, layout);
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
    const identity = `DATA_DIR=${layout.dataDir}`;
    const deadline = Date.now() + EXEC_TIMEOUT_MS;
    for (;;) {
      const pid = childrenOf(init).find((p) => environHas(p, identity));
      if (pid) return { pid, init, child };
      if (child.exitCode !== null || child.signalCode !== null) throw failed(`bubblewrap exited with ${await exitOf(child)}`);
      if (Date.now() > deadline) throw failed(`no sandbox process after ${EXEC_TIMEOUT_MS} ms`);
      await sleep(2);
    }
  }

  /** Runs bubblewrap to its end (the start-up probe); rejects with its stderr. */
  run(args: string[], layout: Pick<SandboxLayout, "uid">, timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const [command, ...rest] = withoutCapabilities([this.path, ...args]);
      const child = spawn(command!, rest, {
        env: {},
        stdio: ["ignore", "ignore", "pipe", "ignore", this.filterFor(layout) ? "pipe" : "ignore"],
        timeout: timeoutMs,
      });
      let stderr = "";
      child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
      child.once("error", reject);
      child.once("close", (code, signal) =>
        code === 0 ? resolve() : reject(Object.assign(new Error(`bubblewrap exited with ${code ?? signal}`), { stderr })),
      );
      this.sendFilter(child, layout);
    });
  }

  /** The seccomp filter for a sandbox with a uid of its own (DESIGN §5a: no user namespaces), if any. */
  private filterFor(layout: Pick<SandboxLayout, "uid">): Buffer | undefined {
    return layout.uid === undefined ? undefined : this.noUserNamespaces;
  }

  /** Writes the filter, if any, to bubblewrap's SECCOMP_FD: it reads it to its end and closes it before the sandbox starts. */
  private sendFilter(child: ChildProcess, layout: Pick<SandboxLayout, "uid">): void {
    const filter = this.filterFor(layout);
    if (!filter) return;
    const stream = child.stdio[SECCOMP_FD] as Writable;
    // An early exit of bubblewrap breaks the pipe; its exit code says why.
    stream.on("error", () => undefined);
    stream.end(filter);
  }

  /**
   * The whole bubblewrap command line: namespaces, the system's files and the command's
   * read-only, the data dir read-write, a private /proc, /dev and /tmp, the
   * environment. As root, bubblewrap sets up the namespaces and setpriv(1) drops to the
   * sandbox's uid, with no capabilities and no_new_privs, before the command runs; otherwise
   * bubblewrap runs unprivileged in a user namespace of the daemon's uid, in which the sandbox
   * may create no further one. As root a seccomp filter refuses user namespaces instead.
   */
  async args(command: string[], layout: SandboxLayout): Promise<string[]> {
    const { uid, dataDir } = layout;
    const writable: Bind[] = dataDir ? [{ src: dataDir, dest: dataDir, writable: true }] : [];
    const binds = [...(await this.systemBinds()), ...(await this.bindsOf(command)), ...writable];
    const drop =
      uid === undefined
        ? []
        : [
            ...(layout.nproc ? [PRLIMIT, `--nproc=${layout.nproc}:${layout.nproc}`, "--"] : []),
            SETPRIV,
            `--reuid=${uid}`,
            `--regid=${uid}`,
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
          ];
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
      ...(layout.tmpBytes ? ["--size", String(layout.tmpBytes)] : []),
      "--tmpfs",
      "/tmp",
      ...bindArgs(binds),
      ...(dataDir ? ["--chdir", dataDir] : []),
      "--clearenv",
      ...Object.entries(layout.env).flatMap(([k, v]) => ["--setenv", k, v]),
      ...(layout.reportPid ? ["--info-fd", "3"] : []),
      ...(this.filterFor(layout) ? ["--seccomp", String(SECCOMP_FD)] : []),
      "--",
      ...drop,
      ...command,
    ];
  }

  /** The system's code and the few files of /etc a program needs, as they exist on this host. */
  systemBinds(): Promise<Bind[]> {
    this.systemBindsFound ??= (async () => {
      const binds: Bind[] = [];
      for (const path of [...SYSTEM_DIRS, ...ETC_FILES]) if (exists(path)) binds.push({ src: path, dest: path });
      for (const path of ROOT_LINKS) {
        const found = await lstat(path).catch(() => undefined);
        if (found?.isDirectory()) binds.push({ src: path, dest: path });
      }
      return binds;
    })();
    return this.systemBindsFound;
  }

  /** A read-only bind of `path` must not show, nor lie inside, anything the sandbox may not see. */
  async refuseProtected(path: string): Promise<void> {
    const forms = async (p: string) => [p, await realpath(p).catch(() => p)];
    for (const candidate of await forms(path)) {
      for (const guarded of this.guarded) {
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

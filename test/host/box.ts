// A Debian 13 (trixie) machine in a box: a root filesystem made by debootstrap once per package
// list and kept in /var/cache/hypervisor-rehearsal, copied fresh for each run, booted with
// systemd-nspawn (systemd as PID 1, journald, socket activation) in a network namespace of its
// own whose only neighbour is this host's end of a veth.
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createWriteStream, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { log, must, run, runAsync, tail, type Ran } from "./run.js";

export const CACHE_DIR = process.env.HYPERVISOR_REHEARSAL_CACHE ?? "/var/cache/hypervisor-rehearsal";
/** What every box boots with (DESIGN of the box: systemd, its bus, addresses, TLS roots, curl). */
const BASE_PACKAGES = ["systemd", "systemd-sysv", "dbus", "iproute2", "ca-certificates", "curl"];
/** Bumped when the way the cached image is made changes, so an older cache is rebuilt. */
const IMAGE_RECIPE = 1;
const SUITE = "trixie";
const PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** The first Debian mirror this machine's apt uses: the box installs from the same place. */
export function debianMirror(): string {
  for (const file of ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"]) {
    if (!existsSync(file)) continue;
    const text = readFileSync(file, "utf8");
    const uri = /^URIs:\s*(\S+)/m.exec(text)?.[1] ?? /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)/m.exec(text)?.[1];
    if (uri && !uri.includes("security")) return uri.replace(/\/$/, "");
  }
  return "http://deb.debian.org/debian";
}

export interface BoxImage {
  rootfs: string;
  /** Built by this run (else taken from the cache), and how long that took. */
  built: boolean;
  ms: number;
  key: string;
  packages: string[];
}

/**
 * The cached root filesystem for these packages: debootstrap's minimal trixie with BASE_PACKAGES,
 * then `packages` (those the runbook installs) installed by apt in a chroot as the runbook's own
 * `apt-get install` would (recommends included). In the booted box the runbook's apt lines then
 * run for real against Debian's mirror and find them installed, instead of spending minutes on
 * dpkg in every run. Rebuilt when the list changes; one build at a time per machine.
 */
export async function boxImage(packages: readonly string[], mirror: string): Promise<BoxImage> {
  const list = [...new Set(packages)].sort();
  const key = createHash("sha256").update(JSON.stringify({ IMAGE_RECIPE, SUITE, mirror, BASE_PACKAGES, list })).digest("hex").slice(0, 16);
  const dir = join(CACHE_DIR, `${SUITE}-${key}`);
  const rootfs = join(dir, "rootfs");
  const started = performance.now();
  mkdirSync(CACHE_DIR, { recursive: true });
  const release = await lock(join(CACHE_DIR, "build.lock"));
  try {
    if (existsSync(join(dir, "complete"))) return { rootfs, built: false, ms: performance.now() - started, key, packages: list };
    const building = join(CACHE_DIR, `building-${process.pid}`);
    rmSync(building, { recursive: true, force: true });
    mkdirSync(building);
    log(`building the ${SUITE} box image (debootstrap from ${mirror}); cached in ${dir} for later runs`);
    const boot = await runAsync("debootstrap", ["--variant=minbase", `--include=${BASE_PACKAGES.join(",")}`, SUITE, join(building, "rootfs"), mirror]);
    if (boot.status !== 0) throw new Error(`debootstrap failed:\n${tail(boot.stdout + boot.stderr, 30)}`);
    // No service starts in the chroot (policy-rc.d); the booted box starts what the packages enable.
    const policy = join(building, "rootfs/usr/sbin/policy-rc.d");
    writeFileSync(policy, "#!/bin/sh\nexit 101\n", { mode: 0o755 });
    const install = await chroot(join(building, "rootfs"), `apt-get update -qq && apt-get install -y -qq ${list.join(" ")} && apt-get clean`);
    rmSync(policy);
    if (install.status !== 0) throw new Error(`installing the runbook's packages failed:\n${tail(install.stdout + install.stderr, 30)}`);
    writeFileSync(join(building, "packages.txt"), `${list.join("\n")}\n`);
    writeFileSync(join(building, "complete"), `${new Date().toISOString()}\n`);
    rmSync(dir, { recursive: true, force: true });
    renameSync(building, dir);
    // Older images (another package list) are not needed any more.
    for (const name of readdirSync(CACHE_DIR))
      if (name.startsWith(`${SUITE}-`) && name !== `${SUITE}-${key}`) rmSync(join(CACHE_DIR, name), { recursive: true, force: true });
    return { rootfs, built: true, ms: performance.now() - started, key, packages: list };
  } finally {
    release();
  }
}

/** Runs a script in a chroot with /proc, /sys and /dev mounted for the time of it. */
async function chroot(root: string, script: string): Promise<Ran> {
  const mounts = [
    ["proc", "proc", "-t", "proc"],
    ["sys", "sysfs", "-t", "sysfs"],
    ["dev", "/dev", "--bind"],
  ];
  const mounted: string[] = [];
  try {
    for (const [target, source, ...how] of mounts) {
      must("mount", [...how, source!, join(root, target!)]);
      mounted.push(join(root, target!));
    }
    return await runAsync("chroot", [root, "/bin/sh", "-c", script], { env: { PATH, LANG: "C.UTF-8", DEBIAN_FRONTEND: "noninteractive", HOME: "/root" } });
  } finally {
    for (const target of mounted.reverse()) run("umount", ["-l", target]);
  }
}

/** A lock directory holding the owner's pid; one whose owner is gone is taken over. */
async function lock(path: string): Promise<() => void> {
  for (;;) {
    try {
      mkdirSync(path);
      writeFileSync(join(path, "pid"), `${process.pid}\n`);
      return () => rmSync(path, { recursive: true, force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const owner = Number(readFileSync(join(path, "pid"), { encoding: "utf8", flag: "a+" }).trim());
      if (!owner || !alive(owner)) {
        // Only a lock older than a few seconds may be stale: a fresh one may not have its pid yet.
        if (Date.now() - statSync(path).mtimeMs > 5000) rmSync(path, { recursive: true, force: true });
      }
      await sleep(1000);
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Everything a run makes on the host carries this prefix: its directory, its network namespace, its veth, the machine's name. */
export const PREFIX = "hvr-";
const RUNS_DIR = "/var/tmp/hypervisor-rehearsal";

export interface BoxNetwork {
  /** The host's end of the veth, and the box's address. */
  hostAddress: string;
  boxAddress: string;
}

export interface ExecOptions {
  input?: string;
  env?: Record<string, string>;
  timeoutMs?: number;
}

/**
 * One run's box: a copy of the cached image, its network namespace and veth, and the
 * systemd-nspawn that boots it (again after a reboot, as a machine's firmware would).
 */
export class Box {
  readonly name: string;
  readonly dir: string;
  readonly root: string;
  readonly netns: string;
  readonly network: BoxNetwork;
  private nspawn: ChildProcess | undefined;
  private exited: Promise<number | null> | undefined;
  private boots = 0;
  private destroyed = false;
  private cgroups: string[] = [];
  /** nspawn --bind= arguments: host:box paths. */
  private binds: readonly string[] = [];

  private constructor(id: string, network: BoxNetwork) {
    this.name = `${PREFIX}${id}`;
    this.dir = join(RUNS_DIR, this.name);
    this.root = join(this.dir, "root");
    this.netns = this.name;
    this.network = network;
  }

  /** Removes what earlier runs left behind when they were killed before their own cleanup (their owner's pid is gone). */
  static sweep(): void {
    if (!existsSync(RUNS_DIR)) return;
    for (const name of readdirSync(RUNS_DIR)) {
      if (!name.startsWith(PREFIX)) continue;
      const owner = Number(readFileSync(join(RUNS_DIR, name, "owner"), { encoding: "utf8", flag: "a+" }).trim());
      if (owner && alive(owner)) continue;
      log(`removing ${name}, left by an earlier run (pid ${owner || "unknown"})`);
      new Box(name.slice(PREFIX.length), { hostAddress: "", boxAddress: "" }).removeHostState();
    }
  }

  /** A fresh copy of `image` with its own network; nothing booted yet. */
  static create(image: string, binds: readonly string[] = []): Box {
    const id = randomBytes(3).toString("hex");
    const box = new Box(id, freeSubnet());
    box.binds = binds;
    mkdirSync(box.dir, { recursive: true });
    writeFileSync(join(box.dir, "owner"), `${process.pid}\n`);
    // The image is never written: an overlay gives the box its own copy of it for free, and the
    // run's writes land in overlay-upper/. Podman's storage cannot be overlayfs on overlayfs, so
    // /var/lib/containers is a plain directory of the run, bound in at boot.
    for (const d of ["root", "overlay-upper", "overlay-work", "containers"]) mkdirSync(join(box.dir, d));
    must("mount", [
      "-t",
      "overlay",
      "overlay",
      "-o",
      `lowerdir=${image},upperdir=${join(box.dir, "overlay-upper")},workdir=${join(box.dir, "overlay-work")}`,
      box.root,
    ]);
    box.makeNetwork();
    // The box reaches this host (its egress proxy) and nothing beyond: nothing is forwarded for
    // it, and it has no name server (debootstrap copied this host's).
    for (const dir of ["-i", "-o"]) must("iptables", ["-w", "-I", "FORWARD", dir, box.name, "-j", "DROP"]);
    writeFileSync(join(box.root, "etc/resolv.conf"), "# no name server: the box reaches Debian's mirror and the npm registry through a proxy\n");
    return box;
  }

  /**
   * The box's network namespace and its veth to this host, made anew for every boot: a machine
   * that reboots starts with an empty network stack (no bridge, no nftables rules, no sysctls
   * Podman set), and a namespace kept across the box's reboot would keep all of them.
   */
  private makeNetwork(): void {
    run("ip", ["netns", "del", this.netns]);
    run("ip", ["link", "del", this.name]);
    must("ip", ["netns", "add", this.netns]);
    must("ip", ["link", "add", this.name, "type", "veth", "peer", "name", "host0", "netns", this.netns]);
    must("ip", ["addr", "add", `${this.network.hostAddress}/30`, "dev", this.name]);
    must("ip", ["link", "set", this.name, "up"]);
    const inside = (...args: string[]) => must("nsenter", [`--net=/run/netns/${this.netns}`, "ip", ...args]);
    inside("link", "set", "lo", "up");
    inside("addr", "add", `${this.network.boxAddress}/30`, "dev", "host0");
    inside("link", "set", "host0", "up");
    inside("route", "add", "default", "via", this.network.hostAddress);
  }

  /** Boots the box and waits until systemd says it is up (running or degraded). */
  async boot(timeoutMs = 120_000): Promise<{ ms: number; state: string }> {
    const started = performance.now();
    // A leftover of an earlier machine of this name makes nspawn complain.
    rmSync(`/run/systemd/nspawn/propagate/${this.name}`, { recursive: true, force: true });
    const console = createWriteStream(join(this.dir, `console-${++this.boots}.log`));
    const cgroups = this.makeCgroups();
    // nspawn starts inside the box's own cgroups (--keep-unit: it stays where it was started), so
    // the box's systemd manages that subtree only, never this host's cgroup roots; and it mounts
    // that subtree for the box (writable with SYSTEMD_NSPAWN_API_VFS_WRITABLE, for Podman inside).
    const child = spawn(
      "/bin/sh",
      [
        "-c",
        'for g in $HVR_CGROUPS; do echo $$ > "$g/cgroup.procs" || exit 1; done; unset HVR_CGROUPS; exec systemd-nspawn "$@"',
        "sh",
        `--directory=${this.root}`,
        `--machine=${this.name}`,
        "--boot",
        "--register=no",
        "--keep-unit",
        "--capability=all",
        // nspawn refuses the keyring calls by default; runc makes each container a session keyring.
        "--system-call-filter=@keyring",
        "--console=passive",
        "--resolv-conf=off",
        `--network-namespace-path=/run/netns/${this.netns}`,
        `--bind=${join(this.dir, "containers")}:/var/lib/containers`,
        ...this.binds.map((b) => `--bind=${b}`),
      ],
      { env: { PATH, SYSTEMD_NSPAWN_API_VFS_WRITABLE: "1", LANG: "C.UTF-8", HVR_CGROUPS: cgroups.join(" ") }, stdio: ["ignore", "pipe", "pipe"] },
    );
    writeFileSync(join(this.dir, "nspawn.pid"), `${child.pid}\n`);
    child.stdout!.pipe(console);
    child.stderr!.pipe(console);
    this.nspawn = child;
    this.exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
    let state = "";
    while (performance.now() - started < timeoutMs) {
      if (child.exitCode !== null)
        throw new Error(
          `systemd-nspawn exited ${child.exitCode} while booting:\n${tail(readFileSync(join(this.dir, `console-${this.boots}.log`), "utf8"), 30)}`,
        );
      if (this.init()) {
        state = this.exec("systemctl is-system-running", { timeoutMs: 10_000 }).stdout.trim();
        if (state === "running" || state === "degraded") {
          this.openCgroups();
          return { ms: performance.now() - started, state };
        }
      }
      await sleep(250);
    }
    throw new Error(`the box did not come up within ${timeoutMs} ms (last state ${state || "none"})`);
  }

  /**
   * A cgroup named after the box in every hierarchy this host mounts, below the cgroup this
   * process is in (cpuset's needs its CPUs and memory nodes before anything can join it).
   */
  private makeCgroups(): string[] {
    const made: string[] = [];
    for (const line of readFileSync("/proc/self/cgroup", "utf8").trim().split("\n")) {
      const [, controllers, path] = line.split(":") as [string, string, string];
      const mount = controllers === "" ? "unified" : controllers.replace(/^name=/, "");
      const parent = join("/sys/fs/cgroup", mount, path);
      if (!existsSync(parent)) continue;
      const dir = join(parent, this.name);
      mkdirSync(dir, { recursive: true });
      if (mount === "cpuset") for (const f of ["cpuset.cpus", "cpuset.mems"]) writeFileSync(join(dir, f), readFileSync(join(parent, f), "utf8"));
      made.push(dir);
    }
    this.cgroups = made;
    return made;
  }

  /**
   * nspawn mounts the resource controllers read-only in the box; Podman inside must make its
   * containers' cgroups there. Each mount shows only the box's own subtree (its cgroup
   * namespace), so writable they still reach nothing of this host's other cgroups.
   */
  private openCgroups(): void {
    const pid = String(this.init());
    // mountinfo: id, parent, dev, root, mount point, mount options, ... - type, source, super options
    for (const line of readFileSync(`/proc/${pid}/mountinfo`, "utf8").trim().split("\n")) {
      const fields = line.split(" ");
      const type = fields[fields.indexOf("-") + 1];
      if (type === "cgroup" && fields[5]!.split(",").includes("ro")) must("nsenter", ["-t", pid, "-m", "mount", "-o", "remount,bind,rw", fields[4]!]);
    }
  }

  /** The box's PID 1 (systemd), as the host sees it: the child of systemd-nspawn. */
  init(): number | undefined {
    const pid = this.nspawn?.pid;
    if (!pid || this.nspawn?.exitCode !== null) return undefined;
    try {
      const children = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
      return children.find((c) => readFileSync(`/proc/${c}/comm`, "utf8").trim() === "systemd");
    } catch {
      return undefined;
    }
  }

  /** Runs a bash script as root inside the box, in all of its namespaces, with a clean environment. */
  exec(script: string, options: ExecOptions = {}): Ran {
    const pid = this.init();
    if (!pid) throw new Error("the box is not running");
    const env = ["env", "-i", `PATH=${PATH}`, "HOME=/root", "LANG=C.UTF-8", "TERM=dumb", ...Object.entries(options.env ?? {}).map(([k, v]) => `${k}=${v}`)];
    return run("nsenter", ["-t", String(pid), "-m", "-u", "-i", "-n", "-p", "-C", "--", ...env, "/bin/bash", "-c", script], {
      input: options.input,
      timeoutMs: options.timeoutMs,
    });
  }

  /** Asynchronous exec, for steps that take minutes while the rehearsal keeps serving traffic. */
  execAsync(script: string, options: ExecOptions = {}): Promise<Ran> {
    const pid = this.init();
    if (!pid) throw new Error("the box is not running");
    const env = ["env", "-i", `PATH=${PATH}`, "HOME=/root", "LANG=C.UTF-8", "TERM=dumb", ...Object.entries(options.env ?? {}).map(([k, v]) => `${k}=${v}`)];
    return runAsync("nsenter", ["-t", String(pid), "-m", "-u", "-i", "-n", "-p", "-C", "--", ...env, "/bin/bash", "-c", script], {
      input: options.input,
      timeout: options.timeoutMs,
    });
  }

  /**
   * `systemctl reboot` inside: systemd-nspawn then exits with 133, and the box is booted again
   * (the part a machine's firmware plays). Resolves once it is up again.
   */
  async reboot(): Promise<{ exitCode: number | null; downMs: number; bootMs: number; state: string }> {
    const started = performance.now();
    this.exec("systemctl reboot", { timeoutMs: 10_000 });
    const exitCode = await Promise.race([this.exited!, sleep(120_000).then(() => "timeout" as const)]);
    if (exitCode === "timeout") throw new Error("the box did not go down within 120 s of systemctl reboot");
    const downMs = performance.now() - started;
    if (exitCode !== 133) throw new Error(`systemd-nspawn exited ${exitCode} on reboot, not 133`);
    this.makeNetwork();
    const { ms: bootMs, state } = await this.boot();
    return { exitCode, downMs, bootMs, state };
  }

  /** Powers the box off (killing it if it does not go), then removes its copy, network namespace and veth. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    if (this.nspawn && this.nspawn.exitCode === null) {
      let asked = false;
      try {
        asked = this.exec("systemctl poweroff", { timeoutMs: 10_000 }).status === 0;
      } catch {
        // not up yet, or not reachable any more: killed below, without waiting
      }
      const code = await Promise.race([this.exited!, sleep(asked ? 60_000 : 0).then(() => "timeout" as const)]);
      if (code === "timeout") {
        // Killing PID 1 of the box ends every process of its PID namespace.
        const init = this.init();
        if (init) process.kill(init, "SIGKILL");
        this.nspawn.kill("SIGKILL");
        await this.exited;
      }
    }
    this.removeHostState();
  }

  private removeHostState(): void {
    // A box whose run was killed may still run: its PID 1 takes every process of the box with it.
    const nspawn = Number(readFileSync(join(this.dir, "nspawn.pid"), { encoding: "utf8", flag: "a+" }).trim());
    if (nspawn && alive(nspawn) && readFileSync(`/proc/${nspawn}/cmdline`, "utf8").includes(`--machine=${this.name}`)) {
      for (const child of readFileSync(`/proc/${nspawn}/task/${nspawn}/children`, "utf8").trim().split(/\s+/).filter(Boolean))
        process.kill(Number(child), "SIGKILL");
      process.kill(nspawn, "SIGKILL");
      run("sh", ["-c", `while kill -0 ${nspawn} 2>/dev/null; do sleep 0.2; done`], { timeoutMs: 30_000 });
    }
    // Anything still mounted below the copy (a killed nspawn) goes first, deepest first.
    const mounts = readFileSync("/proc/self/mounts", "utf8")
      .split("\n")
      .map((l) => l.split(" ")[1] ?? "")
      .filter((m) => m.startsWith(`${this.dir}/`))
      .sort((a, b) => b.length - a.length);
    for (const m of mounts) run("umount", ["-l", m]);
    // The box's cgroups, deepest first; each is empty once its PID namespace is gone.
    for (const root of this.cgroups.length ? this.cgroups : boxCgroups(this.name)) removeCgroupTree(root);
    for (const dir of ["-i", "-o"]) while (run("iptables", ["-w", "-D", "FORWARD", dir, this.name, "-j", "DROP"]).status === 0);
    run("ip", ["netns", "del", this.netns]);
    run("ip", ["link", "del", this.name]);
    rmSync(`/run/systemd/nspawn/propagate/${this.name}`, { recursive: true, force: true });
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Every cgroup named `name` directly below any cgroup of any hierarchy (a swept run's). */
function boxCgroups(name: string): string[] {
  const found = run("find", ["/sys/fs/cgroup", "-mindepth", "2", "-type", "d", "-name", name, "-prune"]).stdout;
  return found.split("\n").filter(Boolean);
}

function removeCgroupTree(root: string): void {
  if (!existsSync(root)) return;
  const dirs = run("find", [root, "-depth", "-type", "d"]).stdout.split("\n").filter(Boolean);
  for (const dir of dirs) {
    try {
      rmdirSync(dir);
    } catch (err) {
      log(`cannot remove cgroup ${dir}: ${(err as Error).message}`);
    }
  }
}

/** A /30 in 10.231.0.0/16 that no interface or route of this host uses yet. */
function freeSubnet(): BoxNetwork {
  const used = run("ip", ["-o", "-4", "addr"]).stdout + run("ip", ["-4", "route"]).stdout + run("ip", ["-4", "route", "show", "table", "all"]).stdout;
  for (let attempt = 0; attempt < 100; attempt++) {
    const third = 1 + Math.floor(Math.random() * 254);
    const fourth = 4 * Math.floor(Math.random() * 63);
    const base = `10.231.${third}.`;
    if (used.includes(base)) continue;
    return { hostAddress: `${base}${fourth + 1}`, boxAddress: `${base}${fourth + 2}` };
  }
  throw new Error("no free /30 in 10.231.0.0/16");
}

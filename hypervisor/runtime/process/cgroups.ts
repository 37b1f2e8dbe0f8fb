import { existsSync, readFileSync, readdirSync } from "node:fs";
import { mkdir, readFile, rmdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { SandboxLimits } from "../container-runtime.js";
import { signal } from "./proc.js";

/**
 * The v1 controllers a sandbox's limits need, each its own hierarchy on a hybrid host (cpu and
 * cpuacct may share one), and cpuacct for the CPU time it used.
 */
const V1_CONTROLLERS = ["memory", "pids", "cpu", "cpuacct"] as const;
/** The group every sandbox's group lives in, on each hierarchy (v1) or below the daemon's own (v2). */
const PARENT = "hypervisor";
/** On v2 the daemon's own leaf below its delegated group (systemd's DelegateSubgroup=daemon). */
const DAEMON_LEAF = "daemon";
const CFS_PERIOD_US = 100_000;
/** Until every process of a group is gone after SIGKILL: the kernel reaps within milliseconds. */
const KILL_DEADLINE_MS = 10_000;

/**
 * Each process sandbox in a cgroup of its own (DESIGN §8b), named after the sandbox:
 * `/sys/fs/cgroup/<controller>/hypervisor/<name>` for the v1 memory, pids and cpu controllers,
 * or on a unified (v2) host `<daemon's delegated group>/hypervisor/<name>`. The group holds the
 * memory (no swap), CPU and pids limits, and is how the daemon finds every process of a
 * sandbox, `setsid` ones included, whether or not its record says so.
 */
export class SandboxCgroups {
  /** Made by open(), which finds the hierarchy. */
  constructor(
    private readonly version: 1 | 2,
    /** v1: the hypervisor's group on each controller's hierarchy; v2: the hypervisor's group. */
    private readonly roots: string[],
  ) {}

  /** The cgroups this host lets the daemon make, or why none. */
  static async open(): Promise<SandboxCgroups | string> {
    if (process.getuid?.() !== 0 && !v2Mount()) return "the daemon is not root: sandboxes run without cgroup limits";
    try {
      const unified = v2Mount();
      return unified ? await openV2(unified) : await openV1();
    } catch (err) {
      return `cannot make cgroups for sandboxes: ${(err as Error).message}`;
    }
  }

  /** Each group of `name`'s: one per controller (v1) or one (v2). */
  paths(name: string): string[] {
    return this.roots.map((root) => join(root, name));
  }

  /** Where a process is written to join the sandbox's groups. */
  procsFiles(name: string): string[] {
    return this.paths(name).map((p) => join(p, "cgroup.procs"));
  }

  /** Makes the sandbox's groups (kept if they exist) and sets its limits in them. */
  async prepare(name: string, limits: SandboxLimits): Promise<void> {
    for (const path of this.paths(name)) await mkdir(path, { recursive: true });
    const quota = Math.max(1000, Math.round((limits.nanoCpus / 1e9) * CFS_PERIOD_US));
    if (this.version === 2) {
      const [group] = this.paths(name);
      await writeFile(join(group!, "memory.max"), String(limits.memoryBytes));
      if (existsSync(join(group!, "memory.swap.max"))) await writeFile(join(group!, "memory.swap.max"), "0");
      await writeFile(join(group!, "cpu.max"), `${quota} ${CFS_PERIOD_US}`);
      await writeFile(join(group!, "pids.max"), String(limits.pids));
      return;
    }
    const [memory, pids, cpu] = this.paths(name).slice(0, 3) as [string, string, string];
    // memsw (memory + swap) may never be below the memory limit: lift it, then set both.
    const memsw = join(memory, "memory.memsw.limit_in_bytes");
    const swapAccounted = existsSync(memsw);
    if (swapAccounted) await writeFile(memsw, "-1");
    await writeFile(join(memory, "memory.limit_in_bytes"), String(limits.memoryBytes));
    if (swapAccounted) await writeFile(memsw, String(limits.memoryBytes));
    else await writeFile(join(memory, "memory.swappiness"), "0").catch(() => undefined);
    await writeFile(join(pids, "pids.max"), String(limits.pids));
    await writeFile(join(cpu, "cpu.cfs_period_us"), String(CFS_PERIOD_US));
    await writeFile(join(cpu, "cpu.cfs_quota_us"), String(quota));
  }

  /** Every process in the sandbox's groups now. */
  members(name: string): number[] {
    const pids = new Set<number>();
    for (const file of this.procsFiles(name)) for (const pid of readPids(file)) pids.add(pid);
    return [...pids];
  }

  /**
   * Kills every process in the sandbox's groups and waits until none is left: cgroup.kill where
   * the kernel has it (v2), otherwise SIGKILL to each member, again and again, since a process
   * may fork between the read and the kill (the pids limit bounds how often).
   */
  async killAll(name: string): Promise<boolean> {
    const killFile = this.version === 2 ? join(this.paths(name)[0]!, "cgroup.kill") : undefined;
    const deadline = Date.now() + KILL_DEADLINE_MS;
    for (;;) {
      const pids = this.members(name);
      if (pids.length === 0) return true;
      if (Date.now() > deadline) return false;
      if (killFile && existsSync(killFile)) await writeFile(killFile, "1").catch(() => undefined);
      else for (const pid of pids) signal(pid, "SIGKILL");
      await sleep(10);
    }
  }

  /** Kills what is left and removes the sandbox's groups. */
  async remove(name: string): Promise<void> {
    await this.killAll(name);
    for (const path of this.paths(name)) {
      // A killed process leaves its group once its parent has reaped it: moments later.
      for (let tries = 0; existsSync(path); tries++) {
        try {
          await rmdir(path);
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          if (code === "ENOENT") break;
          if (code !== "EBUSY" || tries > 100) throw err;
          await sleep(20);
        }
      }
    }
  }
}

async function openV1(): Promise<SandboxCgroups | string> {
  const roots: string[] = [];
  for (const controller of V1_CONTROLLERS) {
    const mount = v1Mount(controller);
    if (!mount) return `the ${controller} cgroup controller is not mounted: sandboxes run without cgroup limits`;
    // cpuacct co-mounted with cpu (cpu,cpuacct) is the same group.
    if (!roots.includes(join(mount, PARENT))) roots.push(join(mount, PARENT));
  }
  for (const root of roots) await mkdir(root, { recursive: true });
  return new SandboxCgroups(1, roots);
}

/**
 * On a unified host the daemon may write only below its own (delegated, `Delegate=yes`) group,
 * where a group with processes may not hand controllers down: the daemon lives in a leaf of
 * its own, `daemon` (where systemd's DelegateSubgroup= puts it, or it moves itself there), and
 * sandboxes in `hypervisor/<name>` beside it.
 */
async function openV2(mount: string): Promise<SandboxCgroups | string> {
  const own = groupsOf(process.pid).get("") ?? "/";
  let delegated = join(mount, own);
  if (own.endsWith(`/${DAEMON_LEAF}`)) delegated = dirname(delegated);
  else {
    await mkdir(join(delegated, DAEMON_LEAF), { recursive: true });
    await writeFile(join(delegated, DAEMON_LEAF, "cgroup.procs"), String(process.pid));
  }
  const available = (await readFile(join(delegated, "cgroup.controllers"), "latin1")).trim().split(/\s+/);
  const missing = ["memory", "pids", "cpu"].filter((c) => !available.includes(c));
  if (missing.length) return `the cgroup ${delegated} offers no ${missing.join(", ")} controller (Delegate=yes): sandboxes run without cgroup limits`;
  const enable = "+memory +pids +cpu";
  await writeFile(join(delegated, "cgroup.subtree_control"), enable);
  const parent = join(delegated, PARENT);
  await mkdir(parent, { recursive: true });
  await writeFile(join(parent, "cgroup.subtree_control"), enable);
  return new SandboxCgroups(2, [parent]);
}

/** The mount of the unified hierarchy where it is the only one (not the hybrid's /sys/fs/cgroup/unified). */
function v2Mount(): string | undefined {
  const mounts = cgroupMounts();
  const unified = mounts.find((m) => m.type === "cgroup2");
  return unified && !mounts.some((m) => m.type === "cgroup") ? unified.point : undefined;
}

function v1Mount(controller: string): string | undefined {
  return cgroupMounts().find((m) => m.type === "cgroup" && m.options.split(",").includes(controller))?.point;
}

function cgroupMounts(): { point: string; type: string; options: string }[] {
  return readFileSync("/proc/self/mountinfo", "latin1")
    .split("\n")
    .flatMap((line) => {
      // mount ID, parent, dev, root, mount point, options, optional fields…, "-", type, source, super options
      const [left, right] = line.split(" - ");
      if (!left || !right) return [];
      const point = left.split(" ")[4]!;
      const [type, , superOptions] = right.split(" ");
      return type === "cgroup" || type === "cgroup2" ? [{ point, type, options: superOptions ?? "" }] : [];
    });
}

/** `/proc/<pid>/cgroup` as controller → path (v2's line under ""). */
function groupsOf(pid: number): Map<string, string> {
  const groups = new Map<string, string>();
  for (const line of readFileSync(`/proc/${pid}/cgroup`, "latin1").trim().split("\n")) {
    const [, controllers, path] = /^\d+:([^:]*):(.*)$/.exec(line) ?? [];
    if (path === undefined) continue;
    for (const c of controllers!.split(",")) groups.set(c, path);
  }
  return groups;
}

function readPids(file: string): number[] {
  try {
    return readFileSync(file, "latin1").split("\n").filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Processes whose real uid is `uid`: a sandbox's, wherever they run (its uid is its own). */
export function processesOfUid(uid: number): number[] {
  const found: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const status = readFileSync(`/proc/${entry}/status`, "latin1");
      // A zombie has exited already; only its parent can reap it.
      if (/^State:\s+Z/m.test(status)) continue;
      if (Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]) === uid) found.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/** SIGKILL to every process of `uid` until none is left, or false after the deadline. */
export async function killUid(uid: number): Promise<boolean> {
  const deadline = Date.now() + KILL_DEADLINE_MS;
  for (;;) {
    const pids = processesOfUid(uid);
    if (pids.length === 0) return true;
    if (Date.now() > deadline) return false;
    for (const pid of pids) signal(pid, "SIGKILL");
    await sleep(10);
  }
}

/** A shell that writes its own pid to each of `procsFiles` and only then execs `argv`. */
const JOIN_SCRIPT = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"';

/**
 * `argv`, started inside the groups whose cgroup.procs are `procsFiles`: the process joins them
 * before it execs anything of the sandbox's, so nothing of it ever runs unlimited, and all it
 * forks is born inside.
 */
export function inCgroups(argv: string[], procsFiles: string[]): string[] {
  return procsFiles.length ? ["/bin/sh", "-c", JOIN_SCRIPT, "sh", ...procsFiles, "--", ...argv] : argv;
}

// What the kernel holds for a process's cgroups, read from its own files: the limits and the
// counters the hostile tests compare against, never the runtime's records.
import { existsSync, readFileSync, readdirSync, rmdirSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export interface CgroupReading {
  memoryLimit: number;
  /** Memory plus swap, where the kernel accounts swap. */
  memorySwapLimit: number | undefined;
  /** CPUs as quota over period; undefined when unlimited. */
  cpus: number | undefined;
  pidsMax: number;
}

interface Mount {
  point: string;
  type: string;
  options: string[];
}

function mounts(): Mount[] {
  return readFileSync("/proc/self/mountinfo", "latin1")
    .split("\n")
    .flatMap((line) => {
      const [left, right] = line.split(" - ");
      if (!left || !right) return [];
      const [type, , options] = right.split(" ");
      return type === "cgroup" || type === "cgroup2" ? [{ point: left.split(" ")[4]!, type, options: (options ?? "").split(",") }] : [];
    });
}

/** Whether the host runs the unified hierarchy alone (v2), or v1 controllers. */
export function unifiedOnly(): boolean {
  return !mounts().some((m) => m.type === "cgroup");
}

/** The directory of `controller`'s group that `pid` is in ("" for v2). */
export function groupDir(pid: number, controller: string): string {
  const lines = readFileSync(`/proc/${pid}/cgroup`, "latin1").trim().split("\n");
  if (unifiedOnly()) {
    const path = lines.find((l) => l.startsWith("0::"))!.slice(3);
    return join(mounts().find((m) => m.type === "cgroup2")!.point, path);
  }
  for (const line of lines) {
    const [, controllers, path] = /^\d+:([^:]*):(.*)$/.exec(line) ?? [];
    if (controllers?.split(",").includes(controller)) {
      return join(mounts().find((m) => m.type === "cgroup" && m.options.includes(controller))!.point, path!);
    }
  }
  throw new Error(`process ${pid} is in no ${controller} cgroup`);
}

function num(file: string): number {
  const text = readFileSync(file, "latin1").trim();
  return text === "max" ? Number.POSITIVE_INFINITY : Number(text);
}

/** The limits the kernel enforces on the groups `pid` runs in. */
export function limitsOf(pid: number): CgroupReading {
  if (unifiedOnly()) {
    const dir = groupDir(pid, "");
    const [quota, period] = readFileSync(join(dir, "cpu.max"), "latin1").trim().split(" ");
    const swap = join(dir, "memory.swap.max");
    return {
      memoryLimit: num(join(dir, "memory.max")),
      memorySwapLimit: existsSync(swap) ? num(join(dir, "memory.max")) + num(swap) : undefined,
      cpus: quota === "max" ? undefined : Number(quota) / Number(period),
      pidsMax: num(join(dir, "pids.max")),
    };
  }
  const memory = groupDir(pid, "memory");
  const cpu = groupDir(pid, "cpu");
  const quota = num(join(cpu, "cpu.cfs_quota_us"));
  const memsw = join(memory, "memory.memsw.limit_in_bytes");
  return {
    memoryLimit: num(join(memory, "memory.limit_in_bytes")),
    memorySwapLimit: existsSync(memsw) ? num(memsw) : undefined,
    cpus: quota < 0 ? undefined : quota / num(join(cpu, "cpu.cfs_period_us")),
    pidsMax: num(join(groupDir(pid, "pids"), "pids.max")),
  };
}

/** The counters a hostile test reads: peak memory, pids now, refused forks, CPU throttling. */
export interface CgroupCounters {
  memoryPeak: number;
  pidsCurrent: number;
  /** Forks the pids limit refused. */
  pidsRefused: number;
  /** Time the CPU quota held the group back, in microseconds. */
  throttledUs: number;
  /** CPU time the group's processes used, in microseconds. */
  cpuUs: number;
  /** Times the memory limit was hit or killed a process inside the group. */
  memoryHits: number;
}

export function countersOf(groups: Groups): CgroupCounters {
  const events = (file: string) =>
    Object.fromEntries(
      readFileSync(file, "latin1")
        .trim()
        .split("\n")
        .map((l) => l.split(" "))
        .map(([k, v]) => [k!, Number(v)]),
    );
  if (unifiedOnly()) {
    const dir = groups.memory;
    const stat = events(join(dir, "cpu.stat"));
    return {
      memoryPeak: num(join(dir, "memory.peak")),
      pidsCurrent: num(join(dir, "pids.current")),
      pidsRefused: events(join(dir, "pids.events")).max ?? 0,
      throttledUs: stat.throttled_usec ?? 0,
      cpuUs: stat.usage_usec ?? 0,
      memoryHits: (events(join(dir, "memory.events")).max ?? 0) + (events(join(dir, "memory.events")).oom_kill ?? 0),
    };
  }
  const pidsEvents = join(groups.pids, "pids.events");
  return {
    memoryPeak: num(join(groups.memory, "memory.max_usage_in_bytes")),
    pidsCurrent: num(join(groups.pids, "pids.current")),
    pidsRefused: existsSync(pidsEvents) ? (events(pidsEvents).max ?? 0) : 0,
    throttledUs: (events(join(groups.cpu, "cpu.stat")).throttled_time ?? 0) / 1000,
    cpuUs: num(join(groups.cpuacct, "cpuacct.usage")) / 1000,
    // failcnt stays 0 on recent kernels even at the limit; the OOM kills inside the group count.
    memoryHits: num(join(groups.memory, "memory.failcnt")) + (events(join(groups.memory, "memory.oom_control")).oom_kill ?? 0),
  };
}

interface Groups {
  memory: string;
  pids: string;
  cpu: string;
  cpuacct: string;
}

/** The groups of a running process, for countersOf: read while it runs, counted after. */
export function groupsOf(pid: number): Groups {
  if (unifiedOnly()) {
    const dir = groupDir(pid, "");
    return { memory: dir, pids: dir, cpu: dir, cpuacct: dir };
  }
  return { memory: groupDir(pid, "memory"), pids: groupDir(pid, "pids"), cpu: groupDir(pid, "cpu"), cpuacct: groupDir(pid, "cpuacct") };
}

/** Every process in a group now; none once the group is gone. */
export function membersOf(dir: string): number[] {
  if (!existsSync(dir)) return [];
  return readFileSync(join(dir, "cgroup.procs"), "latin1").split("\n").filter(Boolean).map(Number);
}

/**
 * After a failed test: every process in the sandbox groups named `hv-<prefix>…` is killed and
 * the groups removed, on every v1 hierarchy (v2: below the daemon's group, which the daemon
 * removes with its sandboxes).
 */
export async function removeSandboxGroups(prefix: string): Promise<void> {
  const groups = mounts()
    .filter((m) => m.type === "cgroup")
    .map((m) => join(m.point, "hypervisor"))
    .filter((parent) => existsSync(parent))
    .flatMap((parent) =>
      readdirSync(parent)
        .filter((e) => e.startsWith(`hv-${prefix}`))
        .map((e) => join(parent, e)),
    );
  for (let tries = 0; groups.some((g) => existsSync(g)) && tries < 200; tries++) {
    for (const group of groups.filter((g) => existsSync(g))) {
      const members = membersOf(group);
      for (const pid of members) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // gone meanwhile
        }
      }
      if (members.length === 0) {
        try {
          rmdirSync(group);
        } catch {
          // a killed member not yet reaped: next round
        }
      }
    }
    await sleep(20);
  }
}

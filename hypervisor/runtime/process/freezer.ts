import { existsSync, readFileSync } from "node:fs";
import { mkdir, readFile, rmdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { HypervisorError } from "../../errors.js";

const CGROUP_ROOT = "/sys/fs/cgroup";
/** The v1 freezer hierarchy, where the host is v1 or hybrid (these machines). */
const V1_FREEZER = join(CGROUP_ROOT, "freezer");
/** The kernel freezes within milliseconds (~9 ms measured here); past this something holds it. */
const SETTLE_MS = 5000;

/**
 * The daemon's own cgroup in the unified hierarchy (`0::/path` in /proc/self/cgroup): on a v2
 * host it is the delegated one the sandboxes' groups are made below.
 */
function ownUnifiedCgroup(): string {
  const line = readFileSync("/proc/self/cgroup", "utf8")
    .split("\n")
    .find((l) => l.startsWith("0::"));
  return join(CGROUP_ROOT, line?.slice(3) || "/");
}

interface Flavour {
  /** The directory that holds the sandboxes' groups. */
  base: string;
  /**
   * v1: the freezer is a hierarchy of its own, with a group per sandbox that the sandbox joins.
   * v2: a process is in one cgroup only, so the freezer is the sandbox's own unified group, the
   * one its resource limits made and it joined (./cgroups.ts): nothing to join here.
   */
  ownGroup: boolean;
  /** Writes the frozen or thawed state. */
  set(group: string, frozen: boolean): Promise<void>;
  /** Whether the group is frozen now (a freeze in progress is not yet). */
  frozen(group: string): Promise<boolean>;
}

/** cgroup v1: `freezer.state` takes FROZEN or THAWED and reads FREEZING until every task stopped. */
const v1: Flavour = {
  base: join(V1_FREEZER, "hypervisor"),
  ownGroup: true,
  set: (group, frozen) => writeFile(join(group, "freezer.state"), frozen ? "FROZEN" : "THAWED"),
  frozen: async (group) => (await readFile(join(group, "freezer.state"), "utf8")).trim() === "FROZEN",
};

/** cgroup v2: `cgroup.freeze` takes 1 or 0; `cgroup.events` says `frozen 1` once it holds. */
function v2(base: string): Flavour {
  return {
    base,
    ownGroup: false,
    set: (group, frozen) => writeFile(join(group, "cgroup.freeze"), frozen ? "1" : "0"),
    frozen: async (group) => /^frozen 1$/m.test(await readFile(join(group, "cgroup.events"), "utf8")),
  };
}

/**
 * The cgroup freezer for process sandboxes (DESIGN §8b): each sandbox's processes are placed in
 * a group of their own before its command runs, and freezing the group stops every one of them
 * where it is (memory kept, no CPU) until it is thawed. On a v2 host the group is the sandbox's
 * own unified cgroup, below the daemon's delegated one, which the resource limits use too.
 * Needs root and a writable hierarchy; `available` says whether this host has them.
 */
export class CgroupFreezer {
  readonly available: boolean;
  private readonly flavour: Flavour;

  constructor(private readonly scope: string) {
    const unified = existsSync(join(CGROUP_ROOT, "cgroup.controllers"));
    // v2: where ./cgroups.ts makes the sandboxes' groups, beside the daemon's own leaf.
    const own = ownUnifiedCgroup();
    this.flavour = unified ? v2(join(own.endsWith("/daemon") ? dirname(own) : own, "hypervisor")) : v1;
    this.available = process.getuid?.() === 0 && (unified || existsSync(join(V1_FREEZER, "freezer.state")) || existsSync(join(V1_FREEZER, "cgroup.procs")));
  }

  /**
   * The sandbox's group: `hypervisor/<sandbox>.<scope>` below the hierarchy's root (v1) or the
   * daemon's own cgroup (v2), the scope a hash of the daemon's records dir, so daemons of
   * different state dirs (tests run many at once) never share a group.
   */
  path(sandbox: string): string {
    return join(this.flavour.base, this.flavour.ownGroup ? `${sandbox}.${this.scope}` : sandbox);
  }

  /**
   * Makes the sandbox's group (thawed: a group left frozen by a crash must not freeze the next
   * start) and returns the file a process writes its pid to, to enter it; none without a freezer.
   */
  async prepare(sandbox: string): Promise<string[]> {
    if (!this.available) return [];
    const group = this.path(sandbox);
    await mkdir(group, { recursive: true });
    await this.flavour.set(group, false);
    return this.flavour.ownGroup ? [join(group, "cgroup.procs")] : [];
  }

  async freeze(sandbox: string): Promise<void> {
    await this.settle(sandbox, true);
  }

  async thaw(sandbox: string): Promise<void> {
    await this.settle(sandbox, false);
  }

  /** Whether the sandbox's group is frozen; false when it has none. */
  async frozen(sandbox: string): Promise<boolean> {
    if (!this.available) return false;
    return this.flavour.frozen(this.path(sandbox)).catch(() => false);
  }

  /**
   * Removes the sandbox's group once its last process has left it (the kernel refuses while one
   * is there): a stop waits for its processes, their exit takes a moment more.
   */
  async remove(sandbox: string): Promise<void> {
    if (!this.available) return;
    const group = this.path(sandbox);
    const deadline = Date.now() + SETTLE_MS;
    for (;;) {
      try {
        await rmdir(group);
        return;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === "ENOENT") return;
        if (code !== "EBUSY" || Date.now() > deadline) throw err;
        await sleep(20);
      }
    }
  }

  private async settle(sandbox: string, frozen: boolean): Promise<void> {
    if (!this.available) throw new HypervisorError("internal", "this host has no cgroup freezer the hypervisor may use (it needs root)");
    const group = this.path(sandbox);
    await this.flavour.set(group, frozen).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== "ENOENT") throw err;
      throw new HypervisorError("conflict", `sandbox ${sandbox} has no freezer group (an earlier release started it): it can be frozen after its next start`);
    });
    const deadline = Date.now() + SETTLE_MS;
    while ((await this.flavour.frozen(group)) !== frozen) {
      if (Date.now() > deadline) throw new HypervisorError("internal", `sandbox ${sandbox} did not ${frozen ? "freeze" : "thaw"} within ${SETTLE_MS} ms`);
      // v1 finishes a freeze that met a busy task only when asked again.
      if (frozen) await this.flavour.set(group, true);
      await sleep(2);
    }
  }
}

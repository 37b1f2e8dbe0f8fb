import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";

/**
 * What this machine must provide for the Podman runtime to keep the operating rules: the cgroup
 * v2 controllers behind the sandbox limits (Raspberry Pi kernels have shipped with the memory
 * controller disabled), and no `podman-auto-update.timer`, which would change images without an
 * operator's command. The daemon only reports what it finds, at start and in `/_hv/readyz`; the
 * operator decides (never self-heal). Remote Podman hosts (DESIGN §8a) are checked by their own
 * provisioning, not from here.
 */
export interface HostReport {
  /** The controllers listed in /sys/fs/cgroup/cgroup.controllers; null when that file is unreadable (no cgroup v2 there). */
  cgroupControllers: string[] | null;
  /** Controllers a sandbox limit needs that the host does not offer. */
  missingControllers: string[];
  /** `unknown` when systemctl is missing or cannot answer (no systemd, no bus). */
  autoUpdateTimer: "active" | "inactive" | "unknown";
  /** One sentence per problem found. */
  warnings: string[];
}

export interface HostCheckOptions {
  /** Prefix of /sys/fs/cgroup, for tests. */
  root?: string;
  /** The systemctl to ask, for tests. */
  systemctl?: string;
  /** systemctl may hang on a stuck bus; give up after this long. */
  timeoutMs?: number;
}

/** Each limit of HYPERVISOR_SANDBOX_* and the controller that enforces it. */
const LIMIT_CONTROLLERS: Record<string, string> = { memory: "HYPERVISOR_SANDBOX_MEMORY", cpu: "HYPERVISOR_SANDBOX_CPUS", pids: "HYPERVISOR_SANDBOX_PIDS" };

const AUTO_UPDATE_TIMER = "podman-auto-update.timer";

/** Never rejects: a check that cannot run reports so instead. */
export async function checkHost(options: HostCheckOptions = {}): Promise<HostReport> {
  const controllersFile = join(options.root ?? "/", "sys/fs/cgroup/cgroup.controllers");
  const [cgroupControllers, autoUpdateTimer] = await Promise.all([
    readFile(controllersFile, "utf8").then(
      (text) => text.split(/\s+/).filter(Boolean),
      () => null,
    ),
    timerState(options.systemctl ?? "systemctl", options.timeoutMs ?? 2000),
  ]);
  const missingControllers = cgroupControllers ? Object.keys(LIMIT_CONTROLLERS).filter((c) => !cgroupControllers.includes(c)) : [];
  const warnings: string[] = [];
  if (!cgroupControllers) {
    warnings.push(`cgroup v2 is not mounted at /sys/fs/cgroup: the sandboxes' memory, CPU and pids limits cannot be verified (RUNBOOK stage 2)`);
  } else if (missingControllers.length > 0) {
    const limits = missingControllers.map((c) => `${c} (${LIMIT_CONTROLLERS[c]})`).join(", ");
    warnings.push(
      `the cgroup v2 controllers ${limits} are not enabled: Podman cannot enforce those sandbox limits (Raspberry Pi kernels: cgroup_enable=memory, RUNBOOK stage 2)`,
    );
  }
  if (autoUpdateTimer === "active") {
    warnings.push(`${AUTO_UPDATE_TIMER} is active: images could change without an operator's command; disable and mask it (RUNBOOK stage 2)`);
  }
  return { cgroupControllers, missingControllers, autoUpdateTimer, warnings };
}

function timerState(systemctl: string, timeoutMs: number): Promise<HostReport["autoUpdateTimer"]> {
  return new Promise((resolve) => {
    // is-active exits non-zero for every state but active, so the answer is read from stdout.
    execFile(systemctl, ["is-active", AUTO_UPDATE_TIMER], { timeout: timeoutMs, encoding: "utf8" }, (_err, stdout) => {
      const state = (stdout ?? "").trim();
      if (["active", "activating", "reloading", "refreshing"].includes(state)) resolve("active");
      else if (["inactive", "failed", "deactivating"].includes(state)) resolve("inactive");
      else resolve("unknown");
    });
  });
}

/**
 * The latest report for readiness, which must never wait on systemctl: `latest()` answers at
 * once and starts a fresh check in the background when the last one is older than `maxAgeMs`,
 * so a fix by the operator shows without restarting the daemon.
 */
export class HostChecks {
  private report: HostReport | undefined;
  private checkedAt = -Infinity;
  private running: Promise<HostReport> | undefined;

  constructor(
    private readonly options: HostCheckOptions = {},
    private readonly maxAgeMs = 60_000,
  ) {}

  refresh(): Promise<HostReport> {
    this.running ??= checkHost(this.options).then((report) => {
      this.report = report;
      this.checkedAt = Date.now();
      this.running = undefined;
      return report;
    });
    return this.running;
  }

  /** Undefined until the first check has finished. */
  latest(): HostReport | undefined {
    if (Date.now() - this.checkedAt > this.maxAgeMs) void this.refresh();
    return this.report;
  }
}

import type { Slot } from "../../proxy/target.js";
import { diskBound, diskUsage, overDisk } from "./process/disk.js";
import { sandboxName } from "./container-runtime.js";

/** How often running sandboxes' data volumes are measured; as on the process runtime. */
const DISK_CHECK_MS = 60_000;

/** What the watch needs of the Podman runtime it measures for. */
export interface MeasuredVolumes {
  /** The data volume's mount point on this machine, or undefined when it has none yet. */
  volumePath(user: string, slot: Slot): Promise<string | undefined>;
  /** Running sandboxes made with a disk, and that disk. */
  runningWithDisk(): Promise<{ user: string; slot: Slot; diskBytes: number }[]>;
  stop(user: string, slot: Slot, timeoutMs: number): Promise<void>;
}

/**
 * HYPERVISOR_SANDBOX_DISK on a Podman host whose volumes this machine's file system holds (DESIGN
 * §8b): measured, as Podman's own volume quota needs XFS project quotas under its storage. A
 * sandbox over its disk is stopped, and its next start refused with the reason, until its data
 * is smaller. A remote host's volumes are not on this machine: nothing is measured there.
 */
export class PodmanDiskWatch {
  private timer: NodeJS.Timeout | undefined;
  private measuring = false;
  /** Why each sandbox stopped over its disk is stopped, by name, until a start of it passes the measure. */
  private readonly over = new Map<string, string>();
  /**
   * The watch's own stops under way, by name. Podman reports the container exited before its stop
   * call has torn the network down; a start meanwhile would meet the old address still allocated.
   */
  private readonly stopping = new Map<string, Promise<void>>();

  constructor(
    private readonly volumes: MeasuredVolumes,
    private readonly everyMs = DISK_CHECK_MS,
  ) {}

  /** Throws conflict, with what it holds, when the slot's data is over `diskBytes`. */
  async refuseOver(user: string, slot: Slot, diskBytes: number): Promise<void> {
    // The measure runs from the first sandbox with a disk on: a host without one never walks volumes.
    this.timer ??= setInterval(() => void this.periodic(), this.everyMs).unref();
    const name = sandboxName(user, slot);
    await this.stopping.get(name);
    const path = await this.volumes.volumePath(user, slot);
    const over = path && overDisk(name, await diskUsage(path, diskBound(diskBytes)), diskBytes);
    if (!over) {
      this.over.delete(name);
      return;
    }
    this.over.set(name, over.message);
    throw over;
  }

  /** Why the sandbox `name` is stopped over its disk, if it is. */
  reasonFor(name: string): string | undefined {
    return this.over.get(name);
  }

  /** One measure at a time: a slow walk of many volumes is never overtaken by the next. */
  private async periodic(): Promise<void> {
    if (this.measuring) return;
    this.measuring = true;
    await this.check()
      .catch(() => undefined)
      .finally(() => (this.measuring = false));
  }

  /** Stops the running sandboxes over their disk; returns them and why. */
  async check(): Promise<{ user: string; slot: Slot; reason: string }[]> {
    const stopped: { user: string; slot: Slot; reason: string }[] = [];
    for (const { user, slot, diskBytes } of await this.volumes.runningWithDisk()) {
      const name = sandboxName(user, slot);
      const path = await this.volumes.volumePath(user, slot);
      if (!path || this.stopping.has(name)) continue;
      const over = overDisk(name, await diskUsage(path, diskBound(diskBytes)), diskBytes);
      if (!over) continue;
      this.over.set(name, over.message);
      const stop = this.volumes.stop(user, slot, 5000).catch(() => undefined);
      this.stopping.set(name, stop);
      await stop;
      this.stopping.delete(name);
      stopped.push({ user, slot, reason: over.message });
    }
    return stopped;
  }
}

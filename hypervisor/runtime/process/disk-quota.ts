import { execFile } from "node:child_process";
import { chmod, lstat, mkdir, rename, rm, statfs } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { promisify } from "node:util";
import { BTRFS_MAGIC, isSubvolume } from "../btrfs.js";

const exec = promisify(execFile);

/**
 * How a sandbox's disk (HYPERVISOR_SANDBOX_DISK) holds: `btrfs qgroup` a kernel limit on its
 * data dir's subvolume, a write past it fails at once (EDQUOT); `measured` the periodic measure
 * alone, which stops a sandbox found over it.
 */
export type DiskMethod = "btrfs qgroup" | "measured";

/** Enabling quotas rescans what the file system already holds; a large one takes a while. */
const RESCAN_TIMEOUT_MS = 10 * 60_000;
const COMMAND_TIMEOUT_MS = 60_000;
/** Beside the slot's data while it becomes a subvolume; dot-named, as no user name can be. */
const CONVERTING = ".subvolume";
const CONVERTED = ".directory";

async function btrfs(args: string[], timeout = COMMAND_TIMEOUT_MS): Promise<string> {
  return (await exec("btrfs", args, { timeout, maxBuffer: 1 << 20 })).stdout;
}

async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}

/**
 * The data dirs of process sandboxes, each bounded by the kernel where the file system can:
 * on btrfs each slot's data dir is a subvolume whose qgroup's referenced bytes are limited to
 * its disk. The limit goes with the subvolume, and a restore, promote or fork puts another
 * subvolume in the data dir's place, so `place` sets it at every start, when the data the
 * sandbox will write is the one in place. A qgroup does not bound the number of files: the
 * periodic measure still does.
 */
export class DiskQuotas {
  private constructor(
    readonly method: DiskMethod,
    /** What the daemon says at start about how disks hold here. */
    readonly note: string,
  ) {}

  /**
   * Finds how `dataDir`'s file system bounds a sandbox. On btrfs with quotas off the daemon
   * (root) turns them on: the data dir is the hypervisor's (docs/operating.md gives it a file system
   * of its own), and a limit nothing enforces would be a promise broken. Said at start either way.
   */
  static async open(dataDir: string): Promise<DiskQuotas> {
    const measured = (why: string) => new DiskQuotas("measured", `sandbox disks are measured, not enforced: ${why}`);
    if (Number((await statfs(dataDir)).type) !== BTRFS_MAGIC) {
      return measured(`${dataDir} is not on btrfs (a btrfs file system there gives each sandbox a qgroup limit)`);
    }
    if (process.getuid?.() !== 0) return measured("only root may set btrfs qgroup limits");
    try {
      if (await quotasOn(dataDir)) return new DiskQuotas("btrfs qgroup", `sandbox disks are btrfs qgroup limits on ${dataDir}`);
      await btrfs(["quota", "enable", dataDir]);
      await btrfs(["quota", "rescan", "-w", dataDir], RESCAN_TIMEOUT_MS);
      return new DiskQuotas("btrfs qgroup", `sandbox disks are btrfs qgroup limits on ${dataDir}: btrfs quotas were off there, the daemon turned them on`);
    } catch (err) {
      return measured(`btrfs quotas on ${dataDir} could not be turned on: ${commandError(err)}`);
    }
  }

  /** A slot's new, empty data dir: on btrfs a subvolume, so it can have a limit of its own. */
  async make(dir: string): Promise<void> {
    await this.recover(dir);
    if (await exists(dir)) return;
    if (this.method === "btrfs qgroup") await btrfs(["-q", "subvolume", "create", dir]);
    else await mkdir(dir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700);
  }

  /**
   * Before the sandbox starts: its data dir exists and holds its limit (none where `diskBytes`
   * is unset). A plain directory on btrfs (made by an earlier release, or put there by hand)
   * becomes a subvolume first, its files cloned, not copied.
   */
  async place(dir: string, diskBytes: number | undefined): Promise<void> {
    await this.make(dir);
    if (this.method !== "btrfs qgroup") return;
    if (!(await isSubvolume(dir))) await this.convert(dir);
    await btrfs(["qgroup", "limit", diskBytes ? String(diskBytes) : "none", dir]);
  }

  /** Removes a slot's data dir (a subvolume by its own call); absent is fine. */
  async remove(dir: string): Promise<void> {
    await this.recover(dir);
    await removeTree(dir);
    // Older kernels leave a deleted subvolume's qgroup behind, stale, until cleared: one per removal would pile up.
    // (Newer ones drop it once the deletion is committed, which removeTree waits for.)
    if (this.method === "btrfs qgroup") await btrfs(["qgroup", "clear-stale", dirname(dir)]).catch(() => undefined);
  }

  /** Its files cloned into a new subvolume, which then takes the directory's place. */
  private async convert(dir: string): Promise<void> {
    const { converting, converted } = sidePaths(dir);
    await btrfs(["-q", "subvolume", "create", converting]);
    await exec("cp", ["-a", "--reflink=always", "-T", dir, converting], { timeout: RESCAN_TIMEOUT_MS });
    await rename(dir, converted);
    await rename(converting, dir);
    await rm(converted, { recursive: true, force: true });
  }

  /**
   * What a crash during `convert` left: the directory back where its renames had taken it from
   * (only the rename in between leaves the slot without data), and the half-made copy gone.
   */
  private async recover(dir: string): Promise<void> {
    const { converting, converted } = sidePaths(dir);
    if (await exists(converted)) {
      if (await exists(dir)) await rm(converted, { recursive: true, force: true });
      else await rename(converted, dir);
    }
    await removeTree(converting);
  }
}

/** Whether btrfs quotas are on for the file system holding `path`. */
async function quotasOn(path: string): Promise<boolean> {
  try {
    await btrfs(["qgroup", "show", path]);
    return true;
  } catch (err) {
    if (/quotas not enabled/i.test(commandError(err))) return false;
    throw err;
  }
}

/**
 * A subvolume goes by its own call, at once whatever it holds; where that fails (a subvolume
 * inside it, made before sandboxes were refused them) it is emptied first.
 */
async function removeTree(path: string): Promise<void> {
  if (await isSubvolume(path)) {
    // Committed at once, so its qgroup is stale by the time the caller clears those.
    const deleted = await btrfs(["-q", "subvolume", "delete", "--commit-after", path]).then(
      () => true,
      () => false,
    );
    if (deleted) return;
  }
  await rm(path, { recursive: true, force: true });
  if (await exists(path)) await btrfs(["-q", "subvolume", "delete", "--commit-after", path]);
}

function sidePaths(dir: string): { converting: string; converted: string } {
  const prefix = join(dirname(dir), `.${basename(dir)}`);
  return { converting: `${prefix}${CONVERTING}`, converted: `${prefix}${CONVERTED}` };
}

function commandError(err: unknown): string {
  const e = err as { stderr?: string; message?: string };
  return (e.stderr || e.message || String(err)).trim().slice(0, 300);
}

import { lstat, opendir, stat } from "node:fs/promises";
import { join } from "node:path";
import { HypervisorError } from "../../errors.js";

/** Files a sandbox may keep: one per 4 KiB of its disk, so an inode filler meets a bound too. */
const BYTES_PER_INODE = 4096;

export interface DiskUsage {
  /** Allocated bytes (what the file system gives up, sparse files at their real size). */
  bytes: number;
  inodes: number;
}

/**
 * What `dir` holds, walked without following links; the walk stops once past `stopAbove`
 * (bytes or inodes), as more would only say "over" again.
 */
export async function diskUsage(dir: string, stopAbove: DiskUsage): Promise<DiskUsage> {
  const usage: DiskUsage = { bytes: 0, inodes: 0 };
  const over = () => usage.bytes > stopAbove.bytes || usage.inodes > stopAbove.inodes;
  const walk = async (path: string): Promise<void> => {
    const found = await lstat(path).catch(() => undefined);
    if (!found) return;
    usage.inodes++;
    usage.bytes += found.blocks * 512;
    if (!found.isDirectory() || over()) return;
    const entries = await opendir(path).catch(() => undefined);
    if (!entries) return;
    for await (const entry of entries) {
      await walk(join(path, entry.name));
      if (over()) return;
    }
  };
  await walk(dir);
  return usage;
}

/** The bound of a sandbox whose disk is `diskBytes`. */
export function diskBound(diskBytes: number): DiskUsage {
  return { bytes: diskBytes, inodes: Math.floor(diskBytes / BYTES_PER_INODE) };
}

/**
 * Over its bound: what the user and the operator are told, and why it stays stopped. `bytesHeld`:
 * the kernel holds its bytes (a quota), so only its files count here.
 */
export function overDisk(name: string, usage: DiskUsage, diskBytes: number, bytesHeld = false): HypervisorError | undefined {
  const bound = diskBound(diskBytes);
  if ((bytesHeld || usage.bytes <= bound.bytes) && usage.inodes <= bound.inodes) return undefined;
  const mib = (n: number) => `${Math.round(n / 1024 ** 2)} MiB`;
  return new HypervisorError(
    "conflict",
    `sandbox ${name} holds ${mib(usage.bytes)} in ${usage.inodes} files, over its disk of ${mib(bound.bytes)} and ${bound.inodes} files ` +
      "(HYPERVISOR_SANDBOX_DISK): it stays stopped until its data is made smaller",
  );
}

/**
 * Why sandboxes could fill the database's disk: the state dir and the sandbox data dir on one
 * file system, where nothing but this runtime's periodic measure bounds what a sandbox writes.
 */
export async function sharedFileSystem(stateDir: string, dataDir: string): Promise<string | undefined> {
  const [a, b] = await Promise.all([stat(stateDir), stat(dataDir)]);
  if (a.dev !== b.dev) return undefined;
  return (
    `the state dir ${stateDir} and the sandbox data dir ${dataDir} share a file system without quotas: ` +
    "a sandbox is stopped only when a periodic measure finds it over its disk, and may fill the database's disk before (put HYPERVISOR_SANDBOX_DATA_DIR on a file system of its own)"
  );
}

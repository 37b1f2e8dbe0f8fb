import { execFile } from "node:child_process";
import { lstat, mkdir, rm, statfs, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { BTRFS_MAGIC, isSubvolume } from "../runtime/btrfs.js";
import type { CopyMethod } from "../runtime/slot-data.js";

const exec = promisify(execFile);

export type { CopyMethod };

const XFS_MAGIC = 0x58465342;
/** A copy of a large slot may take minutes on a plain file system; it never hangs forever. */
const COPY_TIMEOUT_MS = 30 * 60_000;

async function run(command: string, args: string[]): Promise<void> {
  await exec(command, args, { timeout: COPY_TIMEOUT_MS, maxBuffer: 1 << 20 });
}

/** Whether `dir`'s file system clones files: tried once with a file of a few bytes. */
async function clones(dir: string): Promise<boolean> {
  const probe = join(dir, `.reflink-probe-${process.pid}`);
  try {
    await writeFile(probe, "probe");
    await run("cp", ["--reflink=always", probe, `${probe}.clone`]);
    return true;
  } catch {
    return false;
  } finally {
    await rm(probe, { force: true });
    await rm(`${probe}.clone`, { force: true });
  }
}

/**
 * Copies the directory `from` to `to` (which must not exist; its parent must, on the same file
 * system) the cheapest way the file system allows, keeping owners, modes, times and links:
 * a btrfs subvolume snapshot when `from` is a subvolume; on btrfs otherwise a new subvolume filled
 * with clones (so the next copy of it is a snapshot); clones on XFS with reflink; every byte
 * elsewhere. Returns the method it used.
 */
export async function copyTree(from: string, to: string): Promise<CopyMethod> {
  const fsType = Number((await statfs(from)).type);
  if (fsType === BTRFS_MAGIC) {
    if (await isSubvolume(from)) {
      await run("btrfs", ["-q", "subvolume", "snapshot", from, to]);
      return "btrfs";
    }
    await run("btrfs", ["-q", "subvolume", "create", to]);
    await run("cp", ["-a", "--reflink=always", "-T", from, to]);
    return "reflink";
  }
  if (fsType === XFS_MAGIC && (await clones(join(to, "..")))) {
    await run("cp", ["-a", "--reflink=always", "-T", from, to]);
    return "reflink";
  }
  await run("cp", ["-a", "--reflink=never", "-T", from, to]);
  return "copy";
}

/** Removes a tree copyTree made (a btrfs subvolume by its own call); absent is fine. */
export async function removeTree(path: string): Promise<void> {
  const st = await lstat(path).catch(() => undefined);
  if (!st) return;
  if (await isSubvolume(path)) {
    await run("btrfs", ["-q", "subvolume", "delete", path]);
    return;
  }
  if (st.isDirectory()) await rm(path, { recursive: true, force: true });
  else await unlink(path);
}

/** The bytes a tree holds (apparent sizes, as a user counts them; clones count in full). */
export async function treeSize(path: string): Promise<number> {
  const { stdout } = await exec("du", ["-s", "-b", "--", path], { timeout: COPY_TIMEOUT_MS });
  return Number(stdout.split("\t")[0]) || 0;
}

/** Makes a directory owner-only: snapshots of everyone's data sit beside each other. */
export async function privateDir(path: string): Promise<void> {
  await mkdir(path, { recursive: true, mode: 0o700 });
}

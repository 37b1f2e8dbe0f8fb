import { lstat, statfs } from "node:fs/promises";

/** btrfs's file-system magic, as statfs(2) reports it. */
export const BTRFS_MAGIC = 0x9123683e;
/** The inode number of every btrfs subvolume's root directory. */
const BTRFS_SUBVOLUME_INO = 256;

/** Whether `path` is the root of a btrfs subvolume (what a snapshot, and a qgroup, is taken of); false when absent. */
export async function isSubvolume(path: string): Promise<boolean> {
  const found = await lstat(path).catch(() => undefined);
  return found?.isDirectory() === true && found.ino === BTRFS_SUBVOLUME_INO && Number((await statfs(path)).type) === BTRFS_MAGIC;
}

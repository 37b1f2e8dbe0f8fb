import { spawn } from "node:child_process";
import { lstat, readdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { crashPoint } from "../crash-points.js";
import { HypervisorError } from "../errors.js";
import type { CopyMethod, Copied, SlotDataPaths, SnapshotSpace } from "../runtime/slot-data.js";
import { copyTree, privateDir, removeTree, treeSize } from "./tree-copy.js";

/** Where a snapshot is being written: a crash leaves it under this name, and the next start removes it. */
const TMP_PREFIX = ".tmp-";
/** A restore's copy of the snapshot, before it replaces the data. */
const INCOMING = ".incoming";
/** The data a restore replaces, between the two renames, before it is a snapshot. */
const REPLACED = ".replaced";

const exists = (path: string) =>
  lstat(path).then(
    () => true,
    () => false,
  );

/**
 * Snapshots as directories beside the data on this machine's file system (`paths.snapshots`),
 * copied the cheapest way it allows (tree-copy.ts). A snapshot is written under a temporary name
 * and renamed when complete; a restore copies the snapshot beside the data and swaps the two by
 * two renames, so a crash leaves either the old data or the new, and what it replaced is kept.
 */
export class PathSnapshotSpace implements SnapshotSpace {
  constructor(private readonly paths: SlotDataPaths) {}

  /** Makes the snapshot directory (owner-only: everyone's snapshots sit beside each other). */
  async prepare(): Promise<this> {
    await privateDir(this.paths.snapshots);
    return this;
  }

  hasData(): Promise<boolean> {
    return exists(this.paths.data);
  }

  async capture(id: string): Promise<Copied> {
    const tmp = this.at(TMP_PREFIX + id);
    let method: CopyMethod;
    try {
      method = await copyTree(this.paths.data, tmp);
    } catch (err) {
      await removeTree(tmp).catch(() => undefined);
      throw err;
    }
    const sizeBytes = await treeSize(tmp);
    await rename(tmp, this.at(id));
    return { method, sizeBytes };
  }

  async replace(from: string, keep: string): Promise<{ method: CopyMethod; kept: Copied | undefined }> {
    const incoming = this.at(INCOMING);
    await removeTree(incoming);
    let method: CopyMethod;
    try {
      method = await copyTree(from, incoming);
    } catch (err) {
      await removeTree(incoming).catch(() => undefined);
      throw err;
    }
    crashPoint("restore-copied");
    const had = await exists(this.paths.data);
    if (had) await rename(this.paths.data, this.at(REPLACED));
    crashPoint("restore-moved-aside");
    await rename(incoming, this.paths.data);
    crashPoint("restore-swapped");
    return { method, kept: had ? await this.keepReplaced(keep) : undefined };
  }

  locationOf(id: string): string {
    return this.at(id);
  }

  async settle(): Promise<void> {
    // The renames made the restore final already.
  }

  /** A restore between its renames: the data goes back; one past them: what it replaced is kept. */
  async recover(_recorded: Set<string>, newId: () => string): Promise<{ present: string[]; keep?: Copied & { id: string } }> {
    let keep: (Copied & { id: string }) | undefined;
    if (await exists(this.at(REPLACED))) {
      if (!(await exists(this.paths.data))) await rename(this.at(REPLACED), this.paths.data);
      else {
        const id = newId();
        keep = { id, ...(await this.keepReplaced(id)) };
      }
    }
    return { present: await readdir(this.paths.snapshots), ...(keep ? { keep } : {}) };
  }

  remove(name: string): Promise<void> {
    return removeTree(this.at(name));
  }

  async exportTar(id: string): Promise<Readable> {
    const path = this.at(id);
    if (!(await exists(path))) throw new HypervisorError("not_found", `snapshot ${id}'s data is missing`, { id });
    return spawn("tar", ["-C", path, "--numeric-owner", "-cf", "-", "."], { stdio: ["ignore", "pipe", "ignore"] }).stdout;
  }

  async purge(): Promise<void> {
    for (const name of await readdir(this.paths.snapshots).catch(() => [])) await removeTree(this.at(name));
    await rm(this.paths.snapshots, { recursive: true, force: true });
  }

  private async keepReplaced(id: string): Promise<Copied> {
    const path = this.at(id);
    await rename(this.at(REPLACED), path);
    crashPoint("snapshot-placed");
    return { method: "move", sizeBytes: await treeSize(path) };
  }

  private at(name: string): string {
    return join(this.paths.snapshots, name);
  }
}

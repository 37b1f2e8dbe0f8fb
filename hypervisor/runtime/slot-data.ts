import type { Readable } from "node:stream";
import type { Slot } from "../../proxy/target.js";

/**
 * How a snapshot's bytes were made: `btrfs` a subvolume snapshot (constant time), `reflink`
 * copy-on-write file clones (btrfs, XFS with reflink), `copy` every byte, `move` a rename of
 * data that was being replaced anyway (a restore keeps what it replaces that way).
 */
export type CopyMethod = "btrfs" | "reflink" | "copy" | "move";

/** Where one slot's data is on this machine, and the directory its snapshots live in. */
export interface SlotDataPaths {
  /** The directory the sandbox sees as `/data` (process runtime: `$DATA_DIR`). */
  data: string;
  /**
   * The slot's snapshots: beside the data on the same file system (so a copy-on-write copy and a
   * rename between the two work), never inside anything a sandbox can see, never in the state dir.
   */
  snapshots: string;
}

/** A copy made: how, and the bytes it holds (apparent sizes, as a user counts them). */
export interface Copied {
  method: CopyMethod;
  sizeBytes: number;
}

/**
 * One slot's data and its snapshots' bytes where the file system of this machine cannot reach
 * them (DESIGN §2a: "or volumes on the user's host"). The Snapshots service keeps the records,
 * the locking, the stillness of the sandbox, retention and pinning; a space only moves bytes, and
 * says what a crash left. A snapshot exists under its id only once complete; anything the space
 * lists that has no record is half-written and is removed.
 */
export interface SnapshotSpace {
  hasData(): Promise<boolean>;
  /** Copies the data as snapshot `id`. */
  capture(id: string): Promise<Copied>;
  /** Where snapshot `id` is (a path, a volume), as the `replace` of either slot of the user takes it. */
  locationOf(id: string): string;
  /**
   * Replaces the data (the sandbox stopped) with a copy of the snapshot at `from` (`locationOf`,
   * of this slot's space or the other slot's: a fork restores live's snapshot into dev). The data it replaces,
   * if any, becomes snapshot `keep`: the caller records it, then `settle`s. Until then a crash is
   * put right by `recover`: the data goes back to what it was before.
   */
  replace(from: string, keep: string): Promise<{ method: CopyMethod; kept: Copied | undefined }>;
  /** The replace's kept snapshot is recorded: the restore is final. */
  settle(): Promise<void>;
  /**
   * After a crash: an interrupted replace put right (`recorded` says whether its kept snapshot was
   * recorded), and the names of every snapshot present, complete or not. `keep`: data a replace
   * had already swapped out, to be recorded under that id.
   */
  recover(recorded: Set<string>, newId: () => string): Promise<{ present: string[]; keep?: Copied & { id: string } }>;
  /** Removes a snapshot (or a half-written one the space listed); absent is fine. */
  remove(name: string): Promise<void>;
  /** The snapshot's data as a tar stream; not_found when its bytes are gone. */
  exportTar(id: string): Promise<Readable>;
  /** Removes every snapshot of the slot, with whatever a crash left. */
  purge(): Promise<void>;
}

/**
 * A runtime capability (DESIGN §2a): where a slot's data is, for snapshots. Host paths (process
 * runtime: `HYPERVISOR_SANDBOX_DATA_DIR/<user>-<slot>`; Podman on this machine: the data volume's
 * mount point), copied there copy-on-write where the file system allows; or a space of its own
 * (Podman on another host: volumes beside the data volume, copied through the Podman API).
 */
export interface SlotData {
  /** Throws not_found when the slot has no data yet (its sandbox was never created). */
  locate(user: string, slot: Slot): Promise<{ paths: SlotDataPaths } | { space: SnapshotSpace }>;
}

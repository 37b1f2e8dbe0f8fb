import type { Slot } from "../../proxy/target.js";

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

/**
 * A runtime capability (DESIGN §2a): the host paths of a slot's data, for snapshots. Process
 * runtime: `HYPERVISOR_SANDBOX_DATA_DIR/<user>-<slot>`; Podman: the data volume's mount point on
 * a host this machine's file system holds.
 */
export interface SlotData {
  /** Throws not_found when the slot has no data yet (its sandbox was never created). */
  locate(user: string, slot: Slot): Promise<SlotDataPaths>;
}

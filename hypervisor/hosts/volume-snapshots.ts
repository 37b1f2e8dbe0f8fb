import type { Readable } from "node:stream";
import { crashPoint } from "../crash-points.js";
import { HypervisorError } from "../errors.js";
import { LABELS, sandboxName } from "../runtime/container-runtime.js";
import type { PodmanRuntime } from "../runtime/podman-runtime.js";
import type { CopyMethod, Copied, SnapshotSpace } from "../runtime/slot-data.js";
import type { Slot } from "../../proxy/target.js";

/** Which snapshot a volume holds. */
const SNAPSHOT_LABEL = "io.hypervisor.snapshot";
/** On the marker of a restore under way: the snapshot keeping the data it replaces ("" for none). */
const RESTORING_LABEL = "io.hypervisor.snapshot.restoring";

/**
 * A slot's snapshots on a Podman host this machine's file system does not hold (DESIGN §2a:
 * "volumes on the user's host"): each a volume `hv-<user>-<slot>-snap-<id>` beside the data
 * volume, labelled with its user, slot and id, copied by a helper container on that host through
 * the API (PodmanVolumes), never through a shell there. Every byte is copied (`copy`).
 *
 * A volume cannot be renamed and the sandbox mounts its data volume by name, so a restore cannot
 * swap two names as on a file system: it first copies the data to the kept snapshot's volume,
 * then leaves a marker volume naming it, then replaces the data volume (and the stopped
 * container that mounts it, made again at the next start) with a copy of the snapshot. The
 * marker goes once the kept snapshot is recorded; found after a crash before that, the data is
 * copied back from the kept one, so the slot holds its old data or the new, never a mix.
 */
export class VolumeSnapshotSpace implements SnapshotSpace {
  private readonly data: string;
  private readonly marker: string;

  constructor(
    private readonly runtime: PodmanRuntime,
    private readonly user: string,
    private readonly slot: Slot,
  ) {
    this.data = `${sandboxName(user, slot)}-data`;
    this.marker = `${sandboxName(user, slot)}-snap-restoring`;
  }

  hasData(): Promise<boolean> {
    return this.runtime.hasVolume(this.user, this.slot);
  }

  async capture(id: string): Promise<Copied> {
    return { method: "copy", sizeBytes: await this.copy(this.data, id, await this.image()) };
  }

  async replace(from: string, keep: string): Promise<{ method: CopyMethod; kept: Copied | undefined }> {
    const image = await this.image();
    if (!(await this.exists(from))) throw new HypervisorError("not_found", `snapshot volume ${from} is missing`, { user: this.user });
    const had = await this.hasData();
    const kept: Copied | undefined = had ? { method: "copy", sizeBytes: await this.copy(this.data, keep, image) } : undefined;
    crashPoint("restore-copied");
    await this.runtime.volumes.create(this.marker, { ...this.labels(), [RESTORING_LABEL]: had ? keep : "" });
    crashPoint("restore-moved-aside");
    try {
      await this.refill(from, image);
    } catch (err) {
      // A host that stopped answering mid-copy: the data goes back now if it can, else at the next start's sweep.
      await this.undo(had ? keep : "", image)
        .then(() => (had ? this.remove(keep) : undefined))
        .catch(() => undefined);
      throw err;
    }
    crashPoint("restore-swapped");
    return { method: "copy", kept };
  }

  locationOf(id: string): string {
    return this.volumeOf(id);
  }

  async settle(): Promise<void> {
    await this.runtime.volumes.remove(this.marker);
  }

  async recover(recorded: Set<string>): Promise<{ present: string[] }> {
    const volumes = await this.runtime.volumes.ofUser(this.user);
    const mine = volumes.filter((v) => v.labels[LABELS.slot] === this.slot);
    const marker = mine.find((v) => v.name === this.marker);
    if (marker) {
      const keep = marker.labels[RESTORING_LABEL] ?? "";
      if (recorded.has(keep)) await this.settle();
      else await this.undo(keep, await this.image());
    }
    const present = mine.map((v) => v.labels[SNAPSHOT_LABEL]).filter((id): id is string => Boolean(id));
    return { present };
  }

  async remove(name: string): Promise<void> {
    await this.runtime.volumes.remove(this.volumeOf(name));
  }

  async exportTar(id: string): Promise<Readable> {
    const volume = this.volumeOf(id);
    if (!(await this.exists(volume))) throw new HypervisorError("not_found", `snapshot ${id}'s data is missing`, { user: this.user, id });
    return this.runtime.volumes.read(volume, await this.image(), this.labels());
  }

  async purge(): Promise<void> {
    for (const v of await this.runtime.volumes.ofUser(this.user)) {
      if (v.labels[LABELS.slot] === this.slot && (v.labels[SNAPSHOT_LABEL] || v.name === this.marker)) await this.runtime.volumes.remove(v.name);
    }
  }

  /** Copies a volume into snapshot `id`'s new volume; its size in bytes. A copy that fails leaves nothing. */
  private async copy(from: string, id: string, image: string): Promise<number> {
    const to = this.volumeOf(id);
    await this.runtime.volumes.create(to, { ...this.labels(), [SNAPSHOT_LABEL]: id });
    try {
      return await this.runtime.volumes.copy(from, to, image, this.labels());
    } catch (err) {
      await this.runtime.volumes.remove(to).catch(() => undefined);
      throw err;
    }
  }

  /** A restore not made final: the data as it was before (the copy in `keep`, or none), and the marker gone. */
  private async undo(keep: string, image: string): Promise<void> {
    if (keep) await this.refill(this.volumeOf(keep), image);
    else await this.dropData();
    await this.settle();
  }

  /** The data volume made again as a copy of `source`; its stopped container goes with the old one. */
  private async refill(source: string, image: string): Promise<void> {
    await this.dropData();
    await this.runtime.volumes.create(this.data, { [LABELS.managed]: "true", ...this.labels() });
    await this.runtime.volumes.copy(source, this.data, image, this.labels());
  }

  /** A volume a container mounts cannot go: the (stopped) container goes first, made again at the next start. */
  private async dropData(): Promise<void> {
    await this.runtime.remove(this.user, this.slot, { removeData: false });
    await this.runtime.volumes.remove(this.data);
  }

  private async exists(volume: string): Promise<boolean> {
    return (await this.runtime.volumes.ofUser(this.user)).some((v) => v.name === volume);
  }

  private image(): Promise<string> {
    return this.runtime.volumes.helperImage(this.user);
  }

  private volumeOf(id: string): string {
    return `${sandboxName(this.user, this.slot)}-snap-${id}`;
  }

  private labels(): Record<string, string> {
    return { [LABELS.user]: this.user, [LABELS.slot]: this.slot };
  }
}

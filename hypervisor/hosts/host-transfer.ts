import type { Logger } from "pino";
import { HypervisorError } from "../errors.js";
import type { Slot } from "../../proxy/target.js";
import type { HostRegistry, Member } from "./host-registry.js";
import { VolumeSnapshotSpace } from "./volume-snapshots.js";

/**
 * What moves between hosts: images (the hypervisor never pulls, so a host that lacks one gets
 * it from a host that has it) and a user's data volumes.
 */
export class HostTransfer {
  private readonly copies = new Map<string, Promise<void>>();

  constructor(
    private readonly registry: HostRegistry,
    private readonly log: Logger,
  ) {}

  /** Copies the user's data volumes (and the images they need) from one host to another; changes nothing on `from`. */
  async copyData(user: string, from: string, to: string, imageIds: Partial<Record<Slot, string>>): Promise<void> {
    const source = this.registry.member(from);
    const target = this.registry.member(to);
    this.registry.refuseUnreachable(source);
    this.registry.refuseUnreachable(target);
    for (const slot of ["a", "b"] as const) {
      const imageId = imageIds[slot];
      if (!imageId || !(await source.runtime.hasVolume(user, slot))) continue;
      // The helper containers that read and write the volume are made from the slot's own image.
      await this.ensureImage(source, imageId);
      await this.ensureImage(target, imageId);
      const archive = await source.runtime.exportVolume(user, slot, imageId);
      await target.runtime.importVolume(user, slot, imageId, archive);
    }
  }

  /** Removes the user's containers, volumes and networks on `host`; placement is not changed. */
  async discard(user: string, host: string): Promise<void> {
    const m = this.registry.member(host);
    for (const slot of ["a", "b"] as const) {
      await m.runtime.remove(user, slot, { removeData: true });
      // Snapshots there are volumes of their own (a remote host's; on this machine they went with the data volume).
      await new VolumeSnapshotSpace(m.runtime, user, slot).purge();
    }
  }

  /**
   * A host that lacks a generation's image gets it from a host that has it (`podman save` piped
   * into `podman load`, both through the API), and the ID it then holds must be the very same.
   */
  async ensureImage(target: Member, imageId: string): Promise<void> {
    if (await target.runtime.hasImage(imageId)) return;
    const k = `${target.record.name}/${imageId}`;
    let pending = this.copies.get(k);
    if (!pending) {
      pending = this.copyImage(target, imageId).finally(() => this.copies.delete(k));
      this.copies.set(k, pending);
    }
    await pending;
  }

  private async copyImage(target: Member, imageId: string): Promise<void> {
    const began = Date.now();
    let source: Member | undefined;
    for (const m of this.registry.ordered()) {
      if (m === target || m.reachable === false) continue;
      if (await m.runtime.hasImage(imageId).catch(() => false)) {
        source = m;
        break;
      }
    }
    if (!source) throw new HypervisorError("not_found", `image ${imageId} is on no reachable host to copy it from (the hypervisor never pulls)`);
    await target.runtime.importImage(await source.runtime.exportImage(imageId));
    if (!(await target.runtime.hasImage(imageId))) {
      throw new HypervisorError("internal", `image ${imageId} copied from ${source.record.name} to ${target.record.name} did not arrive under its ID`);
    }
    this.log.info({ image: imageId, from: source.record.name, to: target.record.name, ms: Date.now() - began }, "image copied to host");
  }
}

import type Docker from "dockerode";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { HypervisorError } from "../errors.js";
import { LABELS, sandboxName } from "./container-runtime.js";
import type { Slot } from "../../proxy/target.js";
import { TarSize } from "./tar-size.js";

/** PodmanRuntime's one way to make an API call: its failures mapped into the error taxonomy. */
export type PodmanCall = <T>(
  what: string,
  fn: () => Promise<T>,
  onStatus?: (status: number) => boolean,
  onMessage?: (message: string) => boolean,
  timeoutMs?: number,
) => Promise<T>;

/** Creating and removing helper containers does real work; under a fleet deploy they queue. */
const HELPER_CALL_MS = 20_000;
/** A volume's bytes streamed whole, out of a helper or into one. */
const TRANSFER_MS = 120_000;
/** Where a helper mounts the volumes it reads and writes. */
const FROM = "/data";
const TO = "/into";

/**
 * Volumes as plain bytes, through the API alone (no shell on the host): a helper container that
 * mounts them and never runs, whose archive endpoint reads a mounted volume as a tar and writes
 * one into another. Moves between hosts and snapshots on a remote host both copy this way, so any
 * image the host holds will do: nothing in it is ever executed.
 */
export class PodmanVolumes {
  constructor(
    private readonly docker: Docker,
    private readonly call: PodmanCall,
  ) {}

  /** A container (never started) mounting `from` at /data and `to` at /into, to be removed with removeHelper. */
  async helper(name: string, image: string, labels: Record<string, string>, from: string, to?: string): Promise<Docker.Container> {
    return this.call(
      "create volume helper",
      () =>
        this.docker.createContainer({
          // Unlabelled as managed, so adoption and listing never see it; named so a leftover is recognisable.
          name: `${name}-${Date.now().toString(36)}`,
          Image: image,
          Labels: labels,
          NetworkDisabled: true,
          HostConfig: { Binds: [`${from}:${FROM}`, ...(to ? [`${to}:${TO}`] : [])], NetworkMode: "none" },
        }),
      undefined,
      undefined,
      HELPER_CALL_MS,
    );
  }

  async removeHelper(id: string): Promise<void> {
    await this.call(
      "remove volume helper",
      () => this.docker.getContainer(id).remove({ force: true }),
      (status) => status === 404,
      undefined,
      HELPER_CALL_MS,
    ).catch(() => undefined);
  }

  /** A helper's /data as a tar; the helper goes when the stream closes. */
  async readHelper(helper: Docker.Container): Promise<Readable> {
    const archive = (await this.call("read volume", () => helper.getArchive({ path: FROM }), undefined, undefined, TRANSFER_MS)) as Readable;
    archive.once("close", () => void this.removeHelper(helper.id));
    return archive;
  }

  /** Unpacks a tar into a helper's /data (`into` false) or /into. */
  async writeHelper(helper: Docker.Container, archive: Readable, into = false): Promise<void> {
    // Podman's archive of a mount point names its entries from the mount's root (`/`, `/f`), so
    // they unpack at the mount point itself.
    await this.call("write volume", () => helper.putArchive(archive, { path: into ? TO : FROM }), undefined, undefined, TRANSFER_MS);
  }

  /**
   * Copies volume `from` into volume `to` (both on this host, `to` empty): read out of one helper
   * mounting both and written back into it. Returns the bytes of the files copied.
   */
  async copy(from: string, to: string, image: string, labels: Record<string, string>): Promise<number> {
    const helper = await this.helper(`${to}-copy`, image, labels, from, to);
    try {
      const archive = (await this.call("read volume", () => helper.getArchive({ path: FROM }), undefined, undefined, TRANSFER_MS)) as Readable;
      const size = new TarSize();
      // The archive is counted as it passes; a failure of either side fails the copy.
      try {
        await Promise.all([pipeline(archive, size), this.writeHelper(helper, size, true)]);
      } catch (err) {
        archive.destroy();
        size.destroy();
        throw err;
      }
      return size.bytes;
    } finally {
      await this.removeHelper(helper.id);
    }
  }

  /** The volume as a tar stream, read through a helper that goes when the stream closes. */
  async read(volume: string, image: string, labels: Record<string, string>): Promise<Readable> {
    return this.readHelper(await this.helper(`${volume}-read`, image, labels, volume));
  }

  async create(name: string, labels: Record<string, string>): Promise<void> {
    await this.call(
      "create volume",
      () => this.docker.createVolume({ Name: name, Labels: labels }),
      (status) => status === 409,
    );
  }

  /** Removes a volume; a helper a crash left mounting it goes with it (`force`). */
  async remove(name: string): Promise<void> {
    await this.call(
      "remove volume",
      () => this.docker.getVolume(name).remove({ force: true }),
      (status) => status === 404,
      undefined,
      HELPER_CALL_MS,
    );
  }

  /** The user's volumes on this host, with their labels. */
  async ofUser(user: string): Promise<{ name: string; labels: Record<string, string> }[]> {
    const answer = await this.call("list volumes", () => this.docker.listVolumes({ filters: { label: [`${LABELS.user}=${user}`] } }));
    return (answer?.Volumes ?? []).map((v) => ({ name: v.Name, labels: v.Labels ?? {} }));
  }

  /**
   * An image for a helper: the one the user's sandbox was made from, or any this host holds (the
   * helper never runs, so it need only exist here; the hypervisor never pulls).
   */
  async helperImage(user: string): Promise<string> {
    for (const slot of ["a", "b"] as const satisfies Slot[]) {
      let image: string | undefined;
      await this.call(
        "inspect container",
        async () => {
          image = (await this.docker.getContainer(sandboxName(user, slot)).inspect()).Image;
        },
        (status) => status === 404,
      );
      if (image) return image;
    }
    const images = await this.call("list images", () => this.docker.listImages());
    const any = images?.[0]?.Id;
    if (!any) throw new HypervisorError("conflict", `the host holds no image a helper container could be made of for ${user}'s data`, { user });
    return any;
  }
}

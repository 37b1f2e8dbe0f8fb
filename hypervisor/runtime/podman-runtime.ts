import Docker from "dockerode";
import { connect } from "node:net";
import type { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { HypervisorError } from "../errors.js";
import {
  DEFAULT_LOG_MAX_BYTES,
  LABELS,
  notFound,
  sandboxEnv,
  sandboxName,
  type ContainerRuntime,
  type Freezing,
  type SandboxEgress,
  type SandboxInfo,
  type SandboxSpec,
} from "./container-runtime.js";
import { PodmanDiskWatch } from "./podman-disk.js";
import { PodmanFence } from "./podman-fence.js";
import { PodmanVolumes } from "./podman-volumes.js";
import type { Endpoint, Slot } from "../../proxy/target.js";
import { LineSplitter, type LogOptions } from "./log-lines.js";

const CONTAINER_PORT = 8080;
const PORT_KEY = `${CONTAINER_PORT}/tcp`;
const DATA_PATH = "/data";
/**
 * Marks a container made in a user namespace of its own. One without it was made by an earlier
 * release, as host root: it is replaced (its data volume kept) at its next start.
 */
const USERNS_LABEL = "io.hypervisor.userns";
/**
 * The uids each sandbox maps (0 to 1023): what Podman's `auto` derives for the sandbox images
 * anyway (its minimum, as their files belong to root), now stated instead of derived.
 */
const USERNS_SIZE = 1024;
/**
 * The spec a container was made from (JSON: the operator's non-secret env, limits, generation;
 * never the egress token), so a start can make it again with a fresh token (DESIGN §5b). One
 * without it was made by an earlier release: it is replaced (its data volume kept) at its next start.
 */
const SPEC_LABEL = "io.hypervisor.spec";
/**
 * A gone or refusing socket fails at once; these bound a Podman that accepts but never answers,
 * so an operator call fails with runtime_unavailable instead of hanging.
 */
const PING_TIMEOUT_MS = 1000;
const QUICK_CALL_MS = 1500;
/** Creating, starting and removing containers do real work; under a fleet deploy they queue. */
const SLOW_CALL_MS = 20_000;
/** Published ports tried at once to tell whether the host's data plane answers. */
const PORTS_PROBED = 3;
/** Moving an image or a data volume between hosts streams it whole. */
const TRANSFER_MS = 120_000;
/** A removal that meets Podman's transient EBUSY is tried this often, this far apart. */
const REMOVE_ATTEMPTS = 5;
const REMOVE_RETRY_MS = 200;
/** Stopping waits the container's own stop timeout first. */
const STOP_MARGIN_MS = 5000;

/** One Podman API to talk to: how dockerode reaches it, what errors call it, and where ports are published. */
export interface PodmanEndpointOptions {
  docker: Docker.DockerOptions;
  /** Named in errors: the socket path, or the host's name and URL. */
  where: string;
  /** The address sandbox ports are published on: loopback on the hypervisor's own machine. */
  publishAddress?: string;
  /** DESIGN §5b: the egress mode the host's kernel holds sandbox networks to, and their gateway tokens (the hypervisor's own host only). */
  egress?: SandboxEgress;
  /** How often running sandboxes' data volumes are measured against their disk (a host on this machine only). */
  diskCheckMs?: number;
  /** false on a remote host: its own firewall holds its sandboxes (deploy/sandbox-host/firewall.sh), never this machine's rules. */
  fenceEgress?: boolean;
}

/**
 * Sandboxes as Podman containers through the Docker-compatible API. Each sandbox gets its own
 * isolated network (`isolate`: netavark's own, or the CNI firewall plugin's same-bridge ingress policy), so sandboxes cannot reach each other, and publishes its
 * port on one address only (127.0.0.1 unless the host says otherwise).
 */
export class PodmanRuntime implements ContainerRuntime, Freezing {
  readonly kind = "podman";
  private readonly docker: Docker;
  private readonly where: string;
  private readonly publishAddress: string;
  /** Where each sandbox seen running last published its port, by container name. */
  private readonly published = new Map<string, Endpoint>();
  private readonly egress: SandboxEgress | undefined;
  private readonly fence: PodmanFence | undefined;
  /** Only where the volumes are on this machine's file system: a Podman reached through a unix socket. */
  private readonly disk: PodmanDiskWatch | undefined;
  /** Containers made by this runtime and not yet started: their token is fresh, their first start keeps it. */
  private readonly fresh = new Set<string>();
  /** The host's volumes as bytes: what moves and remote snapshots copy with. */
  readonly volumes: PodmanVolumes;

  constructor(target: string | PodmanEndpointOptions) {
    const options: PodmanEndpointOptions = typeof target === "string" ? { docker: { socketPath: target }, where: target } : target;
    this.docker = new Docker(options.docker);
    this.egress = options.egress;
    this.fence = options.egress && options.fenceEgress !== false ? new PodmanFence(options.egress) : undefined;
    this.where = options.where;
    this.publishAddress = options.publishAddress ?? "127.0.0.1";
    this.disk = options.docker.socketPath ? new PodmanDiskWatch(this, options.diskCheckMs) : undefined;
    this.volumes = new PodmanVolumes(this.docker, (what, fn, onStatus, onMessage, timeoutMs) => this.call(what, fn, onStatus, onMessage, timeoutMs));
  }

  async ping(timeoutMs = PING_TIMEOUT_MS): Promise<void> {
    await this.call("ping", () => this.docker.ping(), undefined, undefined, timeoutMs);
  }

  async resolveImage(ref: string): Promise<{ imageId: string; version: string }> {
    const image = await this.call(
      "inspect image",
      () => this.docker.getImage(ref).inspect(),
      () => {
        throw new HypervisorError("not_found", `image ${ref} is not in the local store (the hypervisor never pulls)`, { image: ref });
      },
    );
    const version = image.Config?.Labels?.["io.hypervisor.sandbox.version"] ?? image.Id.slice(7, 19);
    return { imageId: image.Id, version };
  }

  async create(spec: SandboxSpec): Promise<SandboxInfo> {
    const { user, slot, generation, limits } = spec;
    if (!generation.imageId) throw new HypervisorError("bad_request", `generation ${generation.id} has no image for the podman runtime`);
    const name = sandboxName(user, slot);
    const conflict = () => new HypervisorError("conflict", `sandbox ${name} already exists`);
    const labels = {
      [LABELS.managed]: "true",
      [LABELS.user]: user,
      [LABELS.slot]: slot,
      [LABELS.generation]: String(generation.id),
    };
    await this.ensureNetwork(name, labels);
    // Before any container runs on the network: the kernel holds it to the egress mode from the first packet.
    const subnet = this.fence && (await this.subnetOf(name));
    if (subnet) await this.fence!.allow(subnet);
    await this.ensureVolume(`${name}-data`, labels);
    // The token lives as long as the container (its environment is fixed when it is made):
    // start() makes a stopped container again, so that each start has a token of its own.
    const env = { ...sandboxEnv(spec, CONTAINER_PORT, DATA_PATH), ...this.egress?.envFor(spec) };
    await this.call(
      "create container",
      () =>
        this.docker.createContainer({
          name,
          Image: generation.imageId,
          Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
          Labels: { ...labels, [USERNS_LABEL]: "auto", [SPEC_LABEL]: JSON.stringify(spec) },
          ExposedPorts: { [PORT_KEY]: {} },
          StopSignal: "SIGTERM",
          HostConfig: {
            // HostPort "" lets the kernel pick a free port, on the one address the hypervisor reaches.
            PortBindings: { [PORT_KEY]: [{ HostIp: this.publishAddress, HostPort: "" }] },
            NetworkMode: name,
            // DESIGN §5a: root in the sandbox is an unprivileged uid on the host, from a range no
            // other container has (`auto`: Podman picks it from the `containers` entries of
            // /etc/subuid and /etc/subgid). The size is given, never derived: deriving it makes
            // Podman 4.3 (Debian 12) mount the image to read its passwd file while it holds the
            // store's layer lock, and it deadlocks for good when another podman process touched
            // the store meanwhile (containers/storage#1387, fixed in Podman 4.4).
            UsernsMode: `auto:size=${USERNS_SIZE}`,
            // `U`: the volume is chowned to that range as it is mounted. A recreated container may
            // get another range, and a volume of an earlier release is owned by host root.
            Binds: [`${name}-data:${DATA_PATH}:U`],
            Memory: limits.memoryBytes,
            // Memory plus swap: no swap beyond the memory limit, as on the process runtime.
            MemorySwap: limits.memoryBytes,
            NanoCpus: limits.nanoCpus,
            PidsLimit: limits.pids,
            ReadonlyRootfs: true,
            CapDrop: ["ALL"],
            SecurityOpt: ["no-new-privileges"],
            Tmpfs: { "/tmp": "rw,size=64m" },
            // The container's log at most (HYPERVISOR_SANDBOX_LOG_MAX, Podman's log_size_max): the
            // k8s-file driver cuts it there. The driver stays containers.conf's (journald bounds its own).
            LogConfig: { Type: "", Config: { "max-size": String(limits.logBytes ?? DEFAULT_LOG_MAX_BYTES) } },
          },
        }),
      (status) => {
        if (status === 409) throw conflict();
        if (status === 404) throw new HypervisorError("not_found", `image ${generation.imageId} of generation ${generation.id} is not in the local store`);
        return false;
      },
      (message) => {
        if (message.includes("already in use")) throw conflict();
        return false;
      },
      SLOW_CALL_MS,
    );
    this.fresh.add(name);
    return (await this.inspect(user, slot))!;
  }

  async start(user: string, slot: Slot): Promise<SandboxInfo> {
    const name = sandboxName(user, slot);
    // DESIGN §5b: a gateway token is made at each start. A container made and not yet started
    // has one that no start used; any other is made again, with a fresh one.
    const renew = this.egress?.mode === "gateway" && !this.fresh.delete(name);
    if (this.disk || renew) {
      const made = await this.made(name);
      if (!made) throw notFound(user, slot);
      const diskBytes = this.disk && specOf(made.Config.Labels, made.Image)?.limits.diskBytes;
      if (diskBytes) await this.disk!.refuseOver(user, slot, diskBytes);
      if (renew) await this.renew(user, slot, made);
    }
    const container = this.docker.getContainer(name);
    await this.call(
      "start container",
      () => container.start(),
      (status) => {
        if (status === 404) throw notFound(user, slot);
        return status === 304; // already running
      },
      undefined,
      SLOW_CALL_MS,
    );
    const info = await this.inspect(user, slot);
    if (!info) throw notFound(user, slot);
    if (this.egress) {
      const address = await this.addressOf(user, slot);
      if (address) this.egress.bind(user, slot, address);
    }
    return info;
  }

  async stop(user: string, slot: Slot, timeoutMs: number): Promise<void> {
    this.published.delete(sandboxName(user, slot));
    this.fresh.delete(sandboxName(user, slot));
    const container = this.docker.getContainer(sandboxName(user, slot));
    const seconds = Math.max(1, Math.ceil(timeoutMs / 1000));
    let paused = false;
    const stop = (again: boolean) =>
      this.call(
        "stop container",
        () => container.stop({ t: seconds }),
        (status) => {
          if (status === 404) throw notFound(user, slot);
          return status === 304; // already stopped
        },
        // Podman refuses to stop a paused container: it is unpaused first, then stopped.
        (message) => !again && (paused = message.includes("paused")),
        seconds * 1000 + STOP_MARGIN_MS,
      );
    await stop(false);
    if (paused) {
      await this.setPaused(user, slot, false);
      await stop(true);
    }
    // Stopped, its token is gone (the process runtime's too); the next start makes a fresh one.
    this.egress?.revoke(user, slot);
  }

  async freeze(user: string, slot: Slot): Promise<void> {
    await this.setPaused(user, slot, true);
  }

  async thaw(user: string, slot: Slot): Promise<void> {
    await this.setPaused(user, slot, false);
  }

  async restart(user: string, slot: Slot, timeoutMs: number): Promise<SandboxInfo> {
    await this.stop(user, slot, timeoutMs);
    return this.start(user, slot);
  }

  async remove(user: string, slot: Slot, opts: { removeData: boolean }): Promise<void> {
    const name = sandboxName(user, slot);
    this.published.delete(name);
    this.fresh.delete(name);
    await this.removeContainer(user, slot);
    this.egress?.revoke(user, slot);
    if (opts.removeData) {
      const subnet = this.fence && (await this.subnetOf(name));
      if (subnet) await this.fence!.forget(subnet);
      await this.call(
        "remove volume",
        () => this.docker.getVolume(`${name}-data`).remove(),
        (status) => {
          return status === 404;
        },
      );
      await this.call(
        "remove network",
        () => this.docker.getNetwork(name).remove(),
        (status) => {
          return status === 404;
        },
      );
    }
  }

  /** The container only (its data volume and network stay); one gone already counts as removed. */
  private async removeContainer(user: string, slot: Slot): Promise<void> {
    const name = sandboxName(user, slot);
    for (let attempt = 1; ; attempt++) {
      try {
        await this.call(
          "remove container",
          () => this.docker.getContainer(name).remove({ force: true }),
          (status) => status === 404,
          undefined,
          SLOW_CALL_MS,
        );
        return;
      } catch (err) {
        // Podman 4 at times fails to unlink a just-stopped container's /dev/shm mount point
        // (EBUSY, containers/podman#11594) while its cleanup still runs. Either the container is
        // gone anyway, which is what was asked, or a moment later the same call succeeds.
        if (!(err as Error).message.includes("device or resource busy")) throw err;
        if ((await this.inspect(user, slot)) === undefined) return;
        if (attempt === REMOVE_ATTEMPTS) throw err;
        await sleep(REMOVE_RETRY_MS);
      }
    }
  }

  /** The container as Podman inspects it, or undefined when there is none. */
  private async made(name: string): Promise<Docker.ContainerInspectInfo | undefined> {
    let found: Docker.ContainerInspectInfo | undefined;
    await this.call(
      "inspect container",
      async () => {
        found = await this.docker.getContainer(name).inspect();
      },
      (status) => status === 404,
    );
    return found;
  }

  /**
   * A stopped container made again from the spec it was made from, with a fresh token in its
   * environment (its data volume and network stay); one that runs keeps its own (start is then a
   * no-op). One without a spec (an earlier release's) cannot be: the manager replaces it, as
   * `outdated` tells it to.
   */
  private async renew(user: string, slot: Slot, found: Docker.ContainerInspectInfo): Promise<void> {
    if (found.State.Running) return;
    const spec = specOf(found.Config.Labels, found.Image);
    if (spec === undefined)
      throw new HypervisorError(
        "conflict",
        `sandbox ${sandboxName(user, slot)} was made by an earlier release, without what a fresh egress token needs: replace it`,
        {
          user,
          slot,
        },
      );
    await this.removeContainer(user, slot);
    await this.create(spec);
  }

  async inspect(user: string, slot: Slot): Promise<SandboxInfo | undefined> {
    let found: Docker.ContainerInspectInfo | undefined;
    await this.call(
      "inspect container",
      async () => {
        found = await this.docker.getContainer(sandboxName(user, slot)).inspect();
      },
      (status) => {
        return status === 404;
      },
    );
    const name = sandboxName(user, slot);
    const over = found && !found.State.Running ? this.disk?.reasonFor(name) : undefined;
    const info = found && { ...toInfo(found, this.publishAddress), ...(over ? { overDisk: over } : {}) };
    if (info?.endpoint) this.published.set(name, info.endpoint);
    else this.published.delete(name);
    return info;
  }

  /**
   * Whether the host's data plane answers: a TCP connection to a port of a sandbox last seen
   * running here (any of a few) is accepted. Needs nothing of the API, so it tells a host whose
   * Podman service is down or restarting (its sandboxes still serve) from one that is cut off.
   * False when no sandbox is known to run here.
   */
  async publishedPortsAnswer(timeoutMs: number): Promise<boolean> {
    const endpoints = [...this.published.values()].slice(-PORTS_PROBED);
    const results = await Promise.all(endpoints.map((endpoint) => accepts(endpoint, timeoutMs)));
    return results.includes(true);
  }

  /** Running sandboxes made with a disk (HYPERVISOR_SANDBOX_DISK), for the disk watch. */
  async runningWithDisk(): Promise<{ user: string; slot: Slot; diskBytes: number }[]> {
    const containers = await this.call("list containers", () =>
      this.docker.listContainers({ filters: { label: [`${LABELS.managed}=true`], status: ["running"] } }),
    );
    return containers.flatMap((c) => {
      const user = c.Labels[LABELS.user];
      const slot = c.Labels[LABELS.slot];
      const diskBytes = specOf(c.Labels, c.ImageID)?.limits.diskBytes;
      return user && (slot === "a" || slot === "b") && diskBytes ? [{ user, slot, diskBytes }] : [];
    });
  }

  /** Stops the running sandboxes over their disk (a host on this machine only); returns them and why. */
  checkDisks(): Promise<{ user: string; slot: Slot; reason: string }[]> {
    return this.disk?.check() ?? Promise.resolve([]);
  }

  async list(): Promise<SandboxInfo[]> {
    const containers = await this.call("list containers", () => this.docker.listContainers({ all: true, filters: { label: [`${LABELS.managed}=true`] } }));
    // The list lacks start times and port bindings in a stable shape: inspect each, all at once,
    // so a 200-user fleet costs one round of parallel calls, not 400 in a row.
    const inspected = await Promise.all(
      containers.map((c) => {
        const user = c.Labels[LABELS.user];
        const slot = c.Labels[LABELS.slot];
        return user && (slot === "a" || slot === "b") ? this.inspect(user, slot) : Promise.resolve(undefined);
      }),
    );
    return inspected.filter((i): i is SandboxInfo => i !== undefined);
  }

  async *logs(user: string, slot: Slot, opts: LogOptions): AsyncIterable<string> {
    const container = this.docker.getContainer(sandboxName(user, slot));
    const ask = { stdout: true, stderr: true, tail: opts.tail, abortSignal: opts.signal };
    const onStatus = (status: number) => {
      if (status === 404) throw notFound(user, slot);
      return false;
    };
    // Without follow the API answers with the whole (framed) text; with follow, a stream that
    // ends when the container stops. Docker's option type cannot tell the two calls apart.
    const answer: Buffer | NodeJS.ReadableStream = opts.follow
      ? await this.call("container logs", () => container.logs({ ...ask, follow: true }), onStatus)
      : await this.call("container logs", () => container.logs({ ...ask, follow: false }), onStatus, undefined, SLOW_CALL_MS);
    const frames = new LogFrames();
    if (Buffer.isBuffer(answer)) {
      yield* [...frames.push(answer), ...frames.end()];
      return;
    }
    const stream = answer as NodeJS.ReadableStream & { destroy(): void };
    const stop = () => stream.destroy();
    opts.signal?.addEventListener("abort", stop, { once: true });
    try {
      for await (const chunk of stream) {
        yield* frames.push(chunk as Buffer);
      }
    } catch (err) {
      if (!opts.signal?.aborted)
        throw new HypervisorError("runtime_unavailable", `the log stream of ${sandboxName(user, slot)} broke off`, undefined, { cause: err });
    } finally {
      opts.signal?.removeEventListener("abort", stop);
      stream.destroy();
    }
    yield* frames.end();
  }

  /** Whether this store holds the image with exactly this ID. */
  async hasImage(imageId: string): Promise<boolean> {
    let found = true;
    await this.call(
      "inspect image",
      async () => {
        const image = await this.docker.getImage(imageId).inspect();
        found = image.Id === imageId;
      },
      (status) => {
        found = status !== 404;
        return !found;
      },
    );
    return found;
  }

  /** `podman save` through the API: the image as a docker-archive tar stream. */
  async exportImage(imageId: string): Promise<Readable> {
    return (await this.call("export image", () => this.docker.getImage(imageId).get(), undefined, undefined, SLOW_CALL_MS)) as Readable;
  }

  /** `podman load` through the API; the caller checks the ID it then finds. */
  async importImage(archive: Readable): Promise<void> {
    const response = (await this.call("load image", () => this.docker.loadImage(archive), undefined, undefined, TRANSFER_MS)) as Readable;
    // The answer is a progress stream; the load is done once it ends.
    await new Promise<void>((resolve, reject) => {
      response.on("error", reject).on("end", resolve).resume();
    });
  }

  /** Whether a slot's data volume exists here. */
  async hasVolume(user: string, slot: Slot): Promise<boolean> {
    let found = true;
    await this.call(
      "inspect volume",
      () => this.docker.getVolume(`${sandboxName(user, slot)}-data`).inspect(),
      (status) => {
        found = status !== 404;
        return !found;
      },
    );
    return found;
  }

  /** Where a slot's data volume is on its host's file system (its mount point); undefined when it does not exist. */
  async volumePath(user: string, slot: Slot): Promise<string | undefined> {
    let found = true;
    const info = await this.call(
      "inspect volume",
      () => this.docker.getVolume(`${sandboxName(user, slot)}-data`).inspect(),
      (status) => {
        found = status !== 404;
        return !found;
      },
    );
    return found ? (info as { Mountpoint?: string } | undefined)?.Mountpoint : undefined;
  }

  /**
   * A slot's data volume as a tar, read through a container that mounts it and never
   * runs (the API's archive call: Podman has no volume export over the compat API).
   */
  async exportVolume(user: string, slot: Slot, imageId: string): Promise<Readable> {
    return this.volumes.readHelper(await this.volumeHelper(user, slot, imageId));
  }

  /** Unpacks a tar made by exportVolume into the slot's data volume here, creating the volume. */
  async importVolume(user: string, slot: Slot, imageId: string, archive: Readable): Promise<void> {
    const name = sandboxName(user, slot);
    await this.ensureVolume(`${name}-data`, { [LABELS.managed]: "true", [LABELS.user]: user, [LABELS.slot]: slot });
    const helper = await this.volumeHelper(user, slot, imageId);
    try {
      await this.volumes.writeHelper(helper, archive);
    } finally {
      await this.volumes.removeHelper(helper.id);
    }
  }

  private volumeHelper(user: string, slot: Slot, imageId: string): Promise<Docker.Container> {
    const name = sandboxName(user, slot);
    return this.volumes.helper(`${name}-move`, imageId, { [LABELS.user]: user, [LABELS.slot]: slot }, `${name}-data`);
  }

  /**
   * Part of a create, and as slow: Podman takes its network lock and reads every network it has
   * (to pick a free subnet), which with a fleet's worth of networks, or another create holding
   * the lock, takes seconds.
   */
  private async ensureNetwork(name: string, labels: Record<string, string>): Promise<void> {
    let exists = true;
    await this.call(
      "inspect network",
      () => this.docker.getNetwork(name).inspect(),
      (status) => {
        exists = status !== 404;
        return !exists;
      },
      undefined,
      SLOW_CALL_MS,
    );
    if (exists) return;
    // Podman's compat API answers a duplicate name with 500, not Docker's 409: a concurrent
    // create is recognised by its message.
    await this.call(
      "create network",
      () => this.docker.createNetwork({ Name: name, Driver: "bridge", Labels: labels, Options: { isolate: "true" } }),
      (status) => status === 409,
      (message) => message.includes("already exists"),
      SLOW_CALL_MS,
    );
  }

  /** The IPv4 subnet of a sandbox's own network, or undefined when it has none (gone). */
  private async subnetOf(name: string): Promise<string | undefined> {
    let subnet: string | undefined;
    await this.call(
      "inspect network",
      async () => {
        const network = (await this.docker.getNetwork(name).inspect()) as { IPAM?: { Config?: { Subnet?: string }[] } };
        subnet = network.IPAM?.Config?.map((c) => c.Subnet).find((s) => s !== undefined && !s.includes(":"));
      },
      (status) => status === 404,
    );
    return subnet;
  }

  /** The address a running sandbox has on its own network. */
  private async addressOf(user: string, slot: Slot): Promise<string | undefined> {
    const name = sandboxName(user, slot);
    let address: string | undefined;
    await this.call(
      "inspect container",
      async () => {
        const c = await this.docker.getContainer(name).inspect();
        address = c.NetworkSettings.Networks?.[name]?.IPAddress || undefined;
      },
      (status) => status === 404,
    );
    return address;
  }

  private async ensureVolume(name: string, labels: Record<string, string>): Promise<void> {
    await this.call(
      "create volume",
      () => this.docker.createVolume({ Name: name, Labels: labels }),
      (status) => {
        return status === 409;
      },
    );
  }

  /**
   * Runs one API call and maps its failure into the error taxonomy. `onStatus` (and `onMessage`,
   * for Podman's 500s that Docker would give a status) may absorb an expected failure (return
   * true) or translate it (throw); anything else becomes an error.
   */
  /**
   * `podman pause` (the cgroup freezer under runc) or unpause, in one call on the hot path of a
   * thaw. Podman refuses to pause a paused container or unpause a running one ("container state
   * improper"): only then is the container inspected, which tells a no-op from one that is not
   * running (not_found).
   */
  private async setPaused(user: string, slot: Slot, paused: boolean): Promise<void> {
    const container = this.docker.getContainer(sandboxName(user, slot));
    const what = paused ? "pause container" : "unpause container";
    let refused: string | undefined;
    await this.call(
      what,
      () => (paused ? container.pause() : container.unpause()),
      (status) => {
        if (status === 404) throw notFound(user, slot);
        return false;
      },
      (message) => {
        if (!message.includes("container state improper")) return false;
        refused = message;
        return true;
      },
    );
    if (refused === undefined) return;
    const info = await this.inspect(user, slot);
    if (!info?.running) throw notFound(user, slot);
    if (Boolean(info.frozen) !== paused) throw new HypervisorError("internal", `podman ${what} failed: ${refused}`);
  }

  private async call<T>(
    what: string,
    fn: () => Promise<T>,
    onStatus?: (status: number) => boolean,
    onMessage?: (message: string) => boolean,
    timeoutMs = QUICK_CALL_MS,
  ): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const hung = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: "ETIMEDOUT" })), timeoutMs);
    });
    try {
      return await Promise.race([fn(), hung]);
    } catch (err) {
      const e = err as { statusCode?: number; code?: string; json?: { message?: string }; message?: string };
      // The handler absorbed the status: the call's effect already holds (e.g. already stopped).
      if (e.statusCode !== undefined && onStatus?.(e.statusCode)) return undefined as T;
      if (e.json?.message && onMessage?.(e.json.message)) return undefined as T;
      if (e.code && ["ENOENT", "ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "EACCES"].includes(e.code)) {
        // A timeout names its call: which one is slow is what an operator has to know.
        const why = e.code === "ETIMEDOUT" ? `${what}: ${e.message}` : e.code;
        throw new HypervisorError("runtime_unavailable", `podman is unavailable at ${this.where} (${why})`, undefined, { cause: err });
      }
      const detail = e.json?.message ?? e.message ?? String(err);
      throw new HypervisorError("internal", `podman ${what} failed: ${detail}`, undefined, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }
}

function accepts(endpoint: Endpoint, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: endpoint.host, port: endpoint.port, timeout: timeoutMs });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.once("connect", () => done(true));
    socket.once("timeout", () => done(false));
    socket.once("error", () => done(false));
  });
}

function toInfo(c: Docker.ContainerInspectInfo, publishAddress: string): SandboxInfo {
  const labels = c.Config.Labels ?? {};
  const binding = c.NetworkSettings.Ports?.[PORT_KEY]?.[0];
  const running = c.State.Running;
  return {
    id: c.Id,
    name: c.Name.replace(/^\//, ""),
    user: labels[LABELS.user] ?? "",
    slot: labels[LABELS.slot] as Slot,
    generationId: Number(labels[LABELS.generation]),
    running,
    endpoint: running && binding ? { host: binding.HostIp || publishAddress, port: Number(binding.HostPort) } : undefined,
    startedAt: running ? c.State.StartedAt : undefined,
    ...(labels[USERNS_LABEL] === undefined || specOf(labels, c.Image) === undefined ? { outdated: true } : {}),
    ...(running && c.State.Paused ? { frozen: true } : {}),
  };
}

/**
 * The spec a container was made from (its SPEC_LABEL), or undefined for one an earlier release
 * made. Podman merges the image's labels into the container's, create-time ones winning: a spec
 * is believed only when it names the container's own user, slot and image, which no image's own
 * label can (an image's ID is a hash of its labels), so an image cannot pass its container off as
 * one this release made, nor choose the spec it is made again from.
 */
function specOf(labels: Record<string, string> | undefined, imageId: string): SandboxSpec | undefined {
  const raw = labels?.[SPEC_LABEL];
  if (raw === undefined) return undefined;
  let spec: SandboxSpec;
  try {
    spec = JSON.parse(raw) as SandboxSpec;
  } catch {
    return undefined;
  }
  const id = (ref: string | undefined) => ref?.replace(/^sha256:/, "");
  const own = spec.user === labels![LABELS.user] && spec.slot === labels![LABELS.slot] && id(spec.generation?.imageId) === id(imageId);
  return own ? spec : undefined;
}

/**
 * Docker's log stream frames each chunk with an 8-byte header: the stream (1 stdout, 2 stderr),
 * three zero bytes, the payload's length (big-endian). Frames may split anywhere across chunks;
 * each stream keeps its own partial line, so stdout and stderr never mix inside one line.
 */
class LogFrames {
  private buffered: Buffer = Buffer.alloc(0);
  private readonly streams = new Map<number, LineSplitter>();

  push(chunk: Buffer): string[] {
    this.buffered = this.buffered.length ? Buffer.concat([this.buffered, chunk]) : chunk;
    const lines: string[] = [];
    let offset = 0;
    while (offset + 8 <= this.buffered.length) {
      const length = this.buffered.readUInt32BE(offset + 4);
      if (offset + 8 + length > this.buffered.length) break;
      const stream = this.buffered[offset]!;
      let splitter = this.streams.get(stream);
      if (!splitter) this.streams.set(stream, (splitter = new LineSplitter()));
      lines.push(...splitter.push(this.buffered.subarray(offset + 8, offset + 8 + length)));
      offset += 8 + length;
    }
    this.buffered = this.buffered.subarray(offset);
    return lines;
  }

  end(): string[] {
    return [...this.streams.values()].flatMap((s) => s.end());
  }
}

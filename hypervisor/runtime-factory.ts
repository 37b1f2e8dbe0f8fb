import { join } from "node:path";
import type { Logger } from "pino";
import type { Config } from "./config.js";
import type { Db } from "./db/database.js";
import { HostChecks } from "./host-checks.js";
import type { HostFleet } from "./hosts/host-fleet.js";
import { HostStore } from "./hosts/host-store.js";
import type { ContainerRuntime, Freezing, HealthProbe, RemoteEgress, SandboxEgress, SelfStopping } from "./runtime/container-runtime.js";
import { FakeRuntime } from "./runtime/fake-runtime.js";
import type { Containment } from "./runtime/process/containment.js";
import { ProcessRuntime } from "./runtime/process/process-runtime.js";
import type { SlotData } from "./runtime/slot-data.js";
import { httpHealthProbe } from "./sandboxes/health-check.js";

/**
 * A runtime and what it can do, as typed capabilities: callers read a capability and never ask
 * for the runtime's concrete type. A capability a runtime lacks is absent; the next ones
 * (freezing, snapshots, an egress fence) are more fields here, not optional methods of every
 * runtime.
 */
export interface Runtime {
  runtime: ContainerRuntime;
  /** What a generation names for it: an image (podman) or an entry command and version (process, fake). */
  takes: "image" | "command";
  /** How its sandboxes' health is asked. */
  health: HealthProbe;
  /** The Podman hosts (DESIGN §8a): registry, placement and moves; also who is out of reach. */
  fleet?: HostFleet;
  /** Freezes idle sandboxes and thaws them (DESIGN §8b): the cgroup freezer, `podman pause`. */
  freezing?: Freezing;
  /** Where a slot's data is on this machine, for snapshots (DESIGN §2a); absent on the fake runtime. */
  slotData?: SlotData;
  /** Stops sandboxes itself (process: over their disk, when measured): the manager forgets them. */
  selfStopping?: SelfStopping;
  checks: RuntimeChecks;
}

/** What the daemon checks of this machine for the runtime. */
export interface RuntimeChecks {
  /** How far this host can contain process sandboxes (DESIGN §5a), probed once before serving. */
  containment?: () => Promise<Containment>;
  /** What this machine lacks for the Podman runtime's rules (cgroup controllers, auto-update), for readyz. */
  host?: HostChecks;
}

export interface RuntimeDeps {
  /** The open database: the fleet loads its hosts and placements from it. */
  db: Db;
  log: Logger;
  /** DESIGN §5b: what the runtime's kernel rules enforce, and the sandboxes' gateway tokens. */
  egress?: SandboxEgress;
  /** DESIGN §5b, §8a: remote Podman hosts' sandboxes' tokens and proxy variables (their own firewalls hold them). */
  remoteEgress?: RemoteEgress | undefined;
}

/**
 * The configured runtime, or `given` (tests: the fake one, or a process runtime built with
 * options of their own), with its capabilities. Podman's client (dockerode, ssh2, ...) is loaded
 * only for Podman: a process-runtime daemon starts without it.
 */
export async function createRuntime(config: Config, { db, log, egress, remoteEgress }: RuntimeDeps, given?: ContainerRuntime): Promise<Runtime> {
  if (given instanceof FakeRuntime) return { runtime: given, takes: "command", health: given.health, freezing: given, checks: {} };
  if (given instanceof ProcessRuntime || (!given && config.runtime === "process")) {
    const runtime =
      given instanceof ProcessRuntime
        ? given
        : new ProcessRuntime({
            recordsDir: join(config.stateDir, "sandboxes"),
            dataDir: config.sandboxDataDir,
            protectedPaths: [config.stateDir, config.operatorSocket, ...(config.operatorTokenFile ? [config.operatorTokenFile] : [])],
            network: config.processNetwork,
            egress,
          });
    return {
      runtime,
      takes: "command",
      health: httpHealthProbe,
      ...(runtime.freezer.available ? { freezing: runtime } : {}),
      slotData: { locate: async (user, slot) => ({ paths: runtime.dataPaths(user, slot) }) },
      selfStopping: runtime,
      checks: { containment: () => runtime.prepare() },
    };
  }
  if (given) throw new Error(`a ${given.kind} runtime cannot be given; the podman runtime is built from the configuration`);
  const { openFleet } = await import("./hosts/host-fleet.js");
  const { runtime, fleet } = openFleet(
    {
      localSocket: config.podmanSocket,
      localCapacity: config.maxSandboxes,
      ssh: { keyFile: config.sshKeyFile, knownHostsFile: config.sshKnownHostsFile },
      ...(egress ? { egress } : {}),
      ...(remoteEgress ? { remoteEgress } : {}),
    },
    new HostStore(db),
    log,
  );
  return {
    runtime,
    takes: "image",
    health: httpHealthProbe,
    fleet,
    freezing: runtime,
    slotData: { locate: (user, slot) => fleet.slotData(user, slot) },
    checks: { host: new HostChecks() },
  };
}

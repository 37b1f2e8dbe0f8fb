// The runtime production runs for Podman, FleetRuntime, through the one contract suite, on a fleet
// of two hosts: the daemon's own Podman (`local`, which holds the image) and a simulated host with
// a store of its own, where the contract's sandbox is placed, so its image is copied there first.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openDatabase } from "../../hypervisor/db/database.js";
import { openFleet } from "../../hypervisor/hosts/host-fleet.js";
import { HostStore } from "../../hypervisor/hosts/host-store.js";
import { createLogger } from "../../hypervisor/logger.js";
import { ensureSandboxImage, podmanSkipReason, PodmanService, removeRunArtifacts, SANDBOX_IMAGE } from "../helpers/podman.js";
import { runId } from "../helpers/run-id.js";
import { SimHost } from "../helpers/sim-hosts.js";
import { runtimeContract } from "./runtime-contract.js";

const skip = podmanSkipReason();

runtimeContract(
  "fleet of two Podman hosts",
  async () => {
    await ensureSandboxImage();
    const dir = mkdtempSync(join(tmpdir(), "hv-fleet-contract-"));
    const local = new PodmanService();
    const remote = new SimHost("n1");
    const db = openDatabase(join(dir, "state.db"));
    const { runtime, fleet } = openFleet(
      { localSocket: local.socketPath, localCapacity: 10, ssh: { keyFile: undefined, knownHostsFile: join(dir, "known_hosts") } },
      new HostStore(db),
      createLogger("silent"),
    );
    const dispose = async () => {
      fleet.close();
      await removeRunArtifacts(`${runId}-contract`);
      await Promise.allSettled([local.dispose(), remote.dispose()]);
      db.close();
      rmSync(dir, { recursive: true, force: true });
    };
    try {
      await local.start();
      await remote.startUnix(1);
      await fleet.addHost({ name: remote.name, url: remote.url, address: remote.address, capacity: 4 });
      fleet.start();
      // The contract's user lives on the host without the image: a create there copies it first.
      // Placements name users, as the daemon's registration makes them.
      db.prepare("INSERT INTO users (name, created_at) VALUES (?, 0)").run(`${runId}-contract`);
      fleet.place(`${runId}-contract`, remote.name);
      const { imageId, version } = await runtime.resolveImage(SANDBOX_IMAGE);
      return {
        runtime,
        // The contract's user is on the remote host: pause and unpause go there.
        freezing: runtime,
        generation: { id: 1, version, imageId },
        envOf: async (info) => {
          const pid = (await remote.podman("inspect", "--format", "{{.State.Pid}}", info.name)).trim();
          const pairs = readFileSync(`/proc/${pid}/environ`, "latin1").split("\0").filter(Boolean);
          return Object.fromEntries(pairs.map((p) => [p.slice(0, p.indexOf("=")), p.slice(p.indexOf("=") + 1)]));
        },
        pidOf: async (info) => Number((await remote.podman("inspect", "--format", "{{.State.Pid}}", info.name)).trim()),
        runtimeEnv: ["PATH", "TERM", "container", "HOSTNAME", "HOME"],
        // The remote host publishes on its own address, in its namespace.
        host: remote.address,
        dispose,
      };
    } catch (err) {
      await dispose();
      throw err;
    }
  },
  skip,
);

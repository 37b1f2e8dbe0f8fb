// DESIGN §5b on Podman: the host's kernel holds each sandbox's own network to the mode.
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after } from "node:test";
import { removePodmanFence } from "../../hypervisor/runtime/podman-fence.js";
import { egressAddress, tempDir } from "../helpers/daemon.js";
import { ensureSandboxImage, podman, podmanSkipReason, PodmanService, removeRunArtifacts, SANDBOX_IMAGE } from "../helpers/podman.js";
import { runId } from "../helpers/run-id.js";
import { egressScript, egressSuite } from "./egress-suite.js";

const skip = podmanSkipReason();
const service = new PodmanService();
const image = `localhost/hv-egress:${runId}`;
if (!skip) {
  await ensureSandboxImage();
  await service.start();
  // The reference image with the egress fixture beside the sandbox app, so it finds the same node.
  const context = tempDir("hv-egress-image-");
  try {
    mkdirSync(join(context.path, "app"));
    copyFileSync(egressScript, join(context.path, "app", "egress-sandbox.js"));
    writeFileSync(
      join(context.path, "Containerfile"),
      [`FROM ${SANDBOX_IMAGE}`, "COPY app/egress-sandbox.js /app/egress/egress-sandbox.js", 'CMD ["/usr/bin/node", "/app/egress/egress-sandbox.js"]', ""].join(
        "\n",
      ),
    );
    await podman("build", "-q", "--pull=never", "-t", image, context.path);
  } finally {
    context.remove();
  }
}
after(async () => {
  if (skip) return;
  await removeRunArtifacts(runId);
  // The fence's rules outlive a daemon, as containers do; this run's go with its networks.
  await removePodmanFence(egressAddress());
  await podman("rmi", "-f", image).catch(() => undefined);
  await service.dispose();
});

egressSuite(
  "podman",
  {
    env: () => ({ HYPERVISOR_RUNTIME: "podman", HYPERVISOR_PODMAN_SOCKET: service.socketPath }),
    generation: () => ({ image }),
    // Its address on its own network: where another container would try it.
    peer: async (user, slot) => {
      const inspected = JSON.parse(await podman("inspect", `hv-${user}-${slot}`))[0] as {
        NetworkSettings: { Networks: Record<string, { IPAddress: string }> };
      };
      return { host: Object.values(inspected.NetworkSettings.Networks)[0]!.IPAddress, port: 8080 };
    },
  },
  skip,
);

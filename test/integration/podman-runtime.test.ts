import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { PodmanRuntime } from "../../hypervisor/runtime/podman-runtime.js";
import { ensureSandboxImage, podman, podmanSkipReason, PodmanService, removeRunArtifacts } from "../helpers/podman.js";
import { runId } from "../helpers/run-id.js";
import { runtimeContract } from "./runtime-contract.js";

const skip = podmanSkipReason();

async function environOfContainer(name: string): Promise<Record<string, string>> {
  const pid = (await podman("inspect", "--format", "{{.State.Pid}}", name)).trim();
  const pairs = readFileSync(`/proc/${pid}/environ`, "latin1").split("\0").filter(Boolean);
  return Object.fromEntries(pairs.map((p) => [p.slice(0, p.indexOf("=")), p.slice(p.indexOf("=") + 1)]));
}

runtimeContract(
  "podman",
  async () => {
    await ensureSandboxImage();
    const service = new PodmanService();
    await service.start();
    const runtime = new PodmanRuntime(service.socketPath);
    const { imageId, version } = await runtime.resolveImage("localhost/hypervisor-sandbox:latest");
    return {
      runtime,
      generation: { id: 1, version, imageId },
      envOf: (info) => environOfContainer(info.name),
      // Podman's own defaults for every container; none comes from the hypervisor.
      runtimeEnv: ["PATH", "TERM", "container", "HOSTNAME", "HOME"],
      dispose: async () => {
        await removeRunArtifacts(`${runId}-contract`);
        await service.dispose();
      },
    };
  },
  skip,
);

describe("podman runtime", { skip }, () => {
  const service = new PodmanService();
  let runtime: PodmanRuntime;
  let imageId: string;
  const alice = `${runId}-iso-alice`;
  const bob = `${runId}-iso-bob`;
  const limits = { memoryBytes: 200 * 1024 * 1024, nanoCpus: 750_000_000, pids: 100 };

  before(async () => {
    await ensureSandboxImage();
    await service.start();
    runtime = new PodmanRuntime(service.socketPath);
    imageId = (await runtime.resolveImage("localhost/hypervisor-sandbox:latest")).imageId;
    for (const user of [alice, bob]) {
      await runtime.create({ user, slot: "a", generation: { id: 3, version: "1", imageId }, env: {}, limits });
      await runtime.start(user, "a");
    }
  });
  after(async () => {
    await removeRunArtifacts(`${runId}-iso`);
    await service.dispose();
  });

  it("resolves a tag to its immutable image ID and never pulls a missing one", async () => {
    assert.match(imageId, /^sha256:[0-9a-f]{64}$/);
    await assert.rejects(runtime.resolveImage("localhost/no-such-image:never"), /not in the local store/);
  });

  it("labels the container and shows the configured limits in podman inspect", async () => {
    const [c] = JSON.parse(await podman("inspect", `hv-${alice}-a`)) as any[];
    assert.equal(c.Config.Labels["io.hypervisor.managed"], "true");
    assert.equal(c.Config.Labels["io.hypervisor.user"], alice);
    assert.equal(c.Config.Labels["io.hypervisor.slot"], "a");
    assert.equal(c.Config.Labels["io.hypervisor.generation"], "3");
    assert.equal(c.HostConfig.Memory, limits.memoryBytes);
    assert.equal(c.HostConfig.NanoCpus, limits.nanoCpus);
    assert.equal(c.HostConfig.PidsLimit, limits.pids);
    assert.equal(c.Image, imageId.replace(/^sha256:/, ""));
  });

  it("publishes the port on 127.0.0.1 only", async () => {
    const [c] = JSON.parse(await podman("inspect", `hv-${alice}-a`)) as any[];
    const bindings = c.HostConfig.PortBindings["8080/tcp"] as { HostIp: string }[];
    assert.deepEqual(
      bindings.map((b) => b.HostIp),
      ["127.0.0.1"],
    );
    const published = c.NetworkSettings.Ports["8080/tcp"] as { HostIp: string }[];
    assert.ok(published.length > 0 && published.every((b) => b.HostIp === "127.0.0.1"));
  });

  it("mounts a data volume per user and slot", async () => {
    const [c] = JSON.parse(await podman("inspect", `hv-${alice}-a`)) as any[];
    const mount = (c.Mounts as { Name?: string; Destination: string }[]).find((m) => m.Destination === "/data");
    assert.equal(mount?.Name, `hv-${alice}-a-data`);
  });

  it("keeps sandboxes from reaching each other", async () => {
    const ipOf = async (name: string) => (await podman("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)).trim();
    const bobIp = await ipOf(`hv-${bob}-a`);
    const aliceIp = await ipOf(`hv-${alice}-a`);
    const probe = (from: string, url: string) =>
      podman(
        "exec",
        from,
        "/usr/bin/node",
        "-e",
        `fetch(${JSON.stringify(url)},{signal:AbortSignal.timeout(1500)}).then(()=>console.log("reached"),()=>console.log("blocked")).finally(()=>process.exit(0))`,
      ).then((s) => s.trim());
    // The probe itself works: a sandbox reaches its own address.
    assert.equal(await probe(`hv-${alice}-a`, `http://${aliceIp}:8080/health`), "reached");
    assert.equal(await probe(`hv-${alice}-a`, `http://${bobIp}:8080/health`), "blocked");
    assert.equal(await probe(`hv-${bob}-a`, `http://${aliceIp}:8080/health`), "blocked");
  });
});

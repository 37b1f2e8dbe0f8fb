import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { PodmanRuntime } from "../../hypervisor/runtime/podman-runtime.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { ensureSandboxImage, podman, podmanSkipReason, PodmanService, removeContainer, removeRunArtifacts, SANDBOX_IMAGE } from "../helpers/podman.js";
import { runId, testUser } from "../helpers/run-id.js";
import { runtimeContract } from "./runtime-contract.js";

const skip = podmanSkipReason();

async function environOfContainer(name: string): Promise<Record<string, string>> {
  const pid = (await podman("inspect", "--format", "{{.State.Pid}}", name)).trim();
  const pairs = readFileSync(`/proc/${pid}/environ`, "latin1").split("\0").filter(Boolean);
  return Object.fromEntries(pairs.map((p) => [p.slice(0, p.indexOf("=")), p.slice(p.indexOf("=") + 1)]));
}

/** How the host sees a container's process: its uids (real, effective, saved, fs) and its uid map. */
async function hostView(name: string): Promise<{ uids: number[]; map: { inside: number; outside: number; size: number }[] }> {
  const pid = (await podman("inspect", "--format", "{{.State.Pid}}", name)).trim();
  const uids = /^Uid:\s+(.*)$/m
    .exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]!
    .trim()
    .split(/\s+/)
    .map(Number);
  const map = readFileSync(`/proc/${pid}/uid_map`, "utf8")
    .trim()
    .split("\n")
    .map((line) => {
      const [inside, outside, size] = line.trim().split(/\s+/).map(Number) as [number, number, number];
      return { inside, outside, size };
    });
  return { uids, map };
}

/** Runs node in a running container, as its root; the script's output. */
const execNode = (name: string, script: string) => podman("exec", name, "/usr/bin/node", "-e", script).then((s) => s.trim());

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
      freezing: runtime,
      generation: { id: 1, version, imageId },
      envOf: (info) => environOfContainer(info.name),
      pidOf: async (info) => Number((await podman("inspect", "--format", "{{.State.Pid}}", info.name)).trim()),
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

  it("runs each sandbox as a non-root uid on the host, in a uid range of its own", async () => {
    const views = [await hostView(`hv-${alice}-a`), await hostView(`hv-${bob}-a`)];
    for (const { uids, map } of views) {
      assert.equal(uids.length, 4);
      assert.ok(
        uids.every((uid) => uid !== 0),
        `the sandbox's process runs as host uids ${uids.join(" ")}`,
      );
      assert.ok(
        map.every((m) => m.outside > 0),
        `no uid inside maps to host root: ${JSON.stringify(map)}`,
      );
    }
    const [a, b] = views.map((v) => v.map[0]!);
    assert.ok(a!.outside + a!.size <= b!.outside || b!.outside + b!.size <= a!.outside, `alice's and bob's ranges overlap: ${JSON.stringify([a, b])}`);
  });

  it("keeps the data volume writable by the sandbox, owned on the host by its own range", async () => {
    const name = `hv-${alice}-a`;
    assert.equal(await execNode(name, `require("fs").writeFileSync("/data/probe", "x"); console.log(require("fs").readFileSync("/data/probe", "utf8"))`), "x");
    const mountpoint = JSON.parse(await podman("volume", "inspect", `${name}-data`))[0].Mountpoint as string;
    const { map } = await hostView(name);
    assert.equal(statSync(`${mountpoint}/probe`).uid, map[0]!.outside, "the file belongs to the sandbox's root as the host maps it");
  });
});

describe("podman sandboxes an earlier release made as host root", { skip }, () => {
  const service = new PodmanService();
  let t: TestDaemon | undefined;
  const user = testUser("upgrade");
  const name = `hv-${user}-a`;

  before(async () => {
    await ensureSandboxImage();
    await service.start();
    t = await bootDaemon({ env: { HYPERVISOR_RUNTIME: "podman", HYPERVISOR_PODMAN_SOCKET: service.socketPath } });
  });
  after(async () => {
    await t?.close();
    await removeRunArtifacts(user);
    await service.dispose();
  });

  it("replaces the container at its next start, data kept and still writable, in a user namespace", async () => {
    assert.equal((await t!.operator.post("/users", { name: user })).status, 201);
    // Started once, so the user is placed on the host as an earlier release had placed it, then stopped.
    assert.equal((await t!.operator.post(`/sandboxes/${user}/live/start`)).status, 200);
    assert.equal((await t!.operator.post(`/sandboxes/${user}/live/stop`)).status, 200);
    const listed = await t!.operator.get<{ sandboxes: { role: string; generation: number }[] }>(`/sandboxes?user=${user}`);
    const generation = listed.body.sandboxes.find((s) => s.role === "live")!.generation;
    // What an earlier release left instead: a stopped container without a user namespace, labelled
    // as the hypervisor labels its own, and a data volume whose files host root wrote.
    await removeContainer(name);
    await podman("volume", "rm", "-f", `${name}-data`);
    await podman("volume", "create", `${name}-data`);
    await podman(
      "run",
      "--rm",
      "--network=none",
      "-v",
      `${name}-data:/data`,
      SANDBOX_IMAGE,
      "/usr/bin/node",
      "-e",
      `require("fs").mkdirSync("/data/kept"); require("fs").writeFileSync("/data/kept/old", "before the upgrade\\n", { mode: 0o644 })`,
    );
    await podman(
      "create",
      "--name",
      name,
      ...["managed=true", `user=${user}`, "slot=a", `generation=${generation}`].flatMap((l) => ["--label", `io.hypervisor.${l}`]),
      "-v",
      `${name}-data:/data`,
      SANDBOX_IMAGE,
    );
    const before = JSON.parse(await podman("inspect", name))[0].Id as string;

    const started = await t!.operator.post(`/sandboxes/${user}/live/start`);
    assert.equal(started.status, 200, JSON.stringify(started.body));
    const [after] = JSON.parse(await podman("inspect", name)) as { Id: string }[];
    assert.notEqual(after!.Id, before, "the old container was replaced");
    const { uids } = await hostView(name);
    assert.ok(
      uids.every((uid) => uid !== 0),
      `runs as host uids ${uids.join(" ")}`,
    );
    assert.equal(
      await execNode(
        name,
        `const fs = require("fs"); fs.appendFileSync("/data/kept/old", "after\\n"); process.stdout.write(fs.readFileSync("/data/kept/old", "utf8"))`,
      ),
      "before the upgrade\nafter",
    );
  });

  // Podman merges an image's labels into its container's. An image carrying the hypervisor's own
  // (a spec naming its user, slot and image, a user-namespace mark) must not make an earlier
  // release's root container pass for one this release made, nor choose what it is made again from.
  it("an image that carries the hypervisor's own labels cannot pass an earlier release's container off as a current one", async () => {
    const forgedUser = testUser("forged");
    const forgedName = `hv-${forgedUser}-a`;
    const forgedImage = `localhost/hv-forged-${runId}:latest`;
    const context = mkdtempSync(join(tmpdir(), "hv-forged-"));
    try {
      assert.equal((await t!.operator.post("/users", { name: forgedUser })).status, 201);
      assert.equal((await t!.operator.post(`/sandboxes/${forgedUser}/live/start`)).status, 200);
      assert.equal((await t!.operator.post(`/sandboxes/${forgedUser}/live/stop`)).status, 200);
      const listed = await t!.operator.get<{ sandboxes: { role: string; generation: number }[] }>(`/sandboxes?user=${forgedUser}`);
      const generation = listed.body.sandboxes.find((s) => s.role === "live")!.generation;
      const baseId = JSON.parse(await podman("image", "inspect", SANDBOX_IMAGE))[0].Id as string;
      const spec = { user: forgedUser, slot: "a", generation: { id: generation, version: "forged", imageId: baseId }, env: {}, limits: { memoryBytes: 0 } };
      writeFileSync(
        join(context, "Containerfile"),
        `FROM ${SANDBOX_IMAGE}\nLABEL io.hypervisor.spec=${JSON.stringify(JSON.stringify(spec))} io.hypervisor.userns=auto io.hypervisor.test-run=${runId}\n`,
      );
      await podman("build", "-q", "--pull=never", "-t", forgedImage, context);
      await removeContainer(forgedName);
      await podman(
        "create",
        "--name",
        forgedName,
        ...["managed=true", `user=${forgedUser}`, "slot=a", `generation=${generation}`].flatMap((l) => ["--label", `io.hypervisor.${l}`]),
        "-v",
        `${forgedName}-data:/data`,
        forgedImage,
      );
      const before = JSON.parse(await podman("inspect", forgedName))[0].Id as string;
      const started = await t!.operator.post(`/sandboxes/${forgedUser}/live/start`);
      assert.equal(started.status, 200, JSON.stringify(started.body));
      const [after] = JSON.parse(await podman("inspect", forgedName)) as { Id: string; Image: string }[];
      assert.notEqual(after!.Id, before, "the forged container was replaced, not started");
      assert.equal(after!.Image, baseId.replace(/^sha256:/, ""), "made again from the generation's image");
      const { uids } = await hostView(forgedName);
      assert.ok(
        uids.every((uid) => uid !== 0),
        `runs as host uids ${uids.join(" ")}`,
      );
    } finally {
      await removeRunArtifacts(forgedUser);
      await podman("rmi", "-f", forgedImage).catch(() => undefined);
      rmSync(context, { recursive: true, force: true });
    }
  });
});

describe("podman runtime disk (DESIGN §8b): a data volume on this machine, measured", { skip }, () => {
  const service = new PodmanService();
  let runtime: PodmanRuntime;
  const user = `${runId}-pdisk`;
  const name = `hv-${user}-a`;
  const diskBytes = 16 * 1024 * 1024;

  before(async () => {
    await ensureSandboxImage();
    await service.start();
    runtime = new PodmanRuntime({ docker: { socketPath: service.socketPath }, where: service.socketPath, diskCheckMs: 200 });
    const { imageId, version } = await runtime.resolveImage(SANDBOX_IMAGE);
    await runtime.create({
      user,
      slot: "a",
      generation: { id: 4, version, imageId },
      env: {},
      limits: { memoryBytes: 200 * 1024 * 1024, nanoCpus: 1e9, pids: 100, diskBytes },
    });
    await runtime.start(user, "a");
  });
  after(async () => {
    await removeRunArtifacts(`${runId}-pdisk`);
    await service.dispose();
  });

  it("stops a sandbox that writes past its disk, and refuses its start with the reason until its data is smaller", async () => {
    // The sandbox itself writes 32 MiB into /data, twice its disk; the measure may stop it while it writes.
    await execNode(name, `require("fs").writeFileSync("/data/big", Buffer.alloc(32 << 20, 1))`).catch(() => undefined);
    const deadline = Date.now() + 15_000;
    while ((await runtime.inspect(user, "a"))?.running && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.equal((await runtime.inspect(user, "a"))?.running, false, "stopped over its disk");
    await assert.rejects(runtime.start(user, "a"), (err: Error) => {
      assert.match(err.message, /holds \d+ MiB in \d+ files, over its disk of 16 MiB and \d+ files/);
      return true;
    });
    const refused = await runtime.inspect(user, "a");
    assert.equal(refused?.running, false, "its start was refused");
    assert.match(refused?.overDisk ?? "", /over its disk of 16 MiB/, "the listing says why it is stopped");
    const mountpoint = JSON.parse(await podman("volume", "inspect", `${name}-data`))[0].Mountpoint as string;
    rmSync(join(mountpoint, "big"));
    const started = await runtime.start(user, "a");
    assert.equal(started.running, true, "started again once its data is smaller");
    assert.equal((await runtime.inspect(user, "a"))?.overDisk, undefined, "and no longer said to be over its disk");
  });
});

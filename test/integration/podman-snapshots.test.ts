import assert from "node:assert/strict";
import { statfsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { buildSandboxImage } from "../../sandbox/build-image.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { LoadLoop, runs } from "../helpers/load.js";
import { podman, podmanForSuite } from "../helpers/podman.js";
import { runId, testUser } from "../helpers/run-id.js";
import { baseUrl } from "../helpers/sandbox-client.js";
import { treeDigest } from "../helpers/tree-digest.js";

const { skip, service } = await podmanForSuite();
const ORIGIN = "http://hv.test";
const BTRFS = 0x9123683e;
const XFS = 0x58465342;

describe("snapshots and promote on Podman volumes (the local host)", { skip }, () => {
  const tags = { v1: `localhost/hv-test-${runId}:snap1`, v2: `localhost/hv-test-${runId}:snap2` };
  const user = testUser("pod-snap");
  let t: TestDaemon;
  let cookie: string;
  let mountpoint: string;

  const live = async () => (await t.daemon.services.manager.ensure(user, "live")).endpoint;
  const bump = async () => ((await (await fetch(`${baseUrl(await live())}/counter`, { method: "POST" })).json()) as { count: number }).count;
  const count = async () => ((await (await fetch(`${baseUrl(await live())}/counter`)).json()) as { count: number }).count;

  before(async () => {
    // Images of this build's sandbox (the counter), tagged for this run.
    for (const [version, tag] of Object.entries(tags)) await buildSandboxImage({ tag, version, labels: { "io.hypervisor.test-run": runId } });
    t = await bootDaemon({
      env: {
        HYPERVISOR_RUNTIME: "podman",
        HYPERVISOR_PODMAN_SOCKET: service.socketPath,
        HYPERVISOR_SANDBOX_IMAGE: tags.v1,
        HYPERVISOR_PUBLIC_ORIGIN: ORIGIN,
      },
    });
    assert.equal((await t.operator.post("/users", { name: user })).status, 201);
    cookie = `hv_session=${t.daemon.services.sessions.create(user, "full").token}`;
  });
  after(async () => {
    await t?.close();
    for (const tag of Object.values(tags)) await podman("rmi", "-f", tag).catch(() => undefined);
  });

  it("snapshots a container's data volume beside it, by the method its file system allows, and restores it", async () => {
    for (let i = 0; i < 3; i++) await bump();
    const slot = t.daemon.services.routing.slotOf(user, "live");
    mountpoint = (await podman("volume", "inspect", "--format", "{{.Mountpoint}}", `hv-${user}-${slot}-data`)).trim();
    const type = Number(statfsSync(mountpoint).type);
    const expected = type === BTRFS || type === XFS ? "reflink" : "copy";
    await t.daemon.services.manager.stop(user, "live");
    const before = treeDigest(mountpoint);
    const res = await t.operator.post(`/users/${user}/snapshots`, { slot: "live" });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.equal(res.body.snapshot.method, expected);
    const dir = join(mountpoint, "..", "hv-snapshots", res.body.snapshot.id);
    assert.deepEqual(treeDigest(dir), before);

    assert.equal(await bump(), 4);
    const restored = await t.operator.post(`/users/${user}/snapshots/${res.body.snapshot.id}/restore`, {});
    assert.equal(restored.status, 200, JSON.stringify(restored.body));
    assert.equal(await count(), 3);
    assert.equal(restored.body.kept.reason, "pre-restore");
  });

  it("promotes under load on the container's own volume: no failed request, the counter continues", async () => {
    const g1 = t.daemon.services.routing.generationOf(user, "live");
    const g2 = (await t.operator.post("/generations", { image: tags.v2 })).body.generation.id as number;
    assert.equal((await t.operator.post("/deploy", { generation: g2, users: [user] })).status, 200);
    const loop = new LoadLoop(t.publicUrl, "/whoami", cookie).start();
    await sleep(300);
    const res = await t.operator.post("/promote", { users: [user] });
    await sleep(300);
    const samples = await loop.stop();
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual(
      samples.filter((s) => s.status !== 200),
      [],
    );
    assert.deepEqual(runs(samples.map((s) => Number(s.generation))), [g1, g2]);
    assert.equal(await count(), 3);
    assert.equal(await bump(), 4);
  });
});

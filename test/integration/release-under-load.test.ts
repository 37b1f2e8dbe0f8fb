import assert from "node:assert/strict";
import { once } from "node:events";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { WebSocket } from "ws";
import { buildSandboxImage } from "../../sandbox/build-image.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { LoadLoop, runs } from "../helpers/load.js";
import { ensureSandboxImage, podman, podmanSkipReason, PodmanService, removeRunArtifacts } from "../helpers/podman.js";
import { runId, testUser } from "../helpers/run-id.js";

const skip = podmanSkipReason();
const ORIGIN = "http://hv.test";
const DRAIN_MS = 1500;

describe("deploy, swap and rollback on podman under load", { skip }, () => {
  const service = new PodmanService();
  const tags = { v1: `localhost/hv-test-${runId}:v1`, v2: `localhost/hv-test-${runId}:v2` };
  const users = [testUser("load-1"), testUser("load-2"), testUser("load-3")];
  let t: TestDaemon;
  const cookies = new Map<string, string>();

  before(async () => {
    await ensureSandboxImage();
    for (const [version, tag] of Object.entries(tags)) await buildSandboxImage({ tag, version, labels: { "io.hypervisor.test-run": runId } });
    await service.start();
    t = await bootDaemon({
      env: {
        HYPERVISOR_RUNTIME: "podman",
        HYPERVISOR_PODMAN_SOCKET: service.socketPath,
        HYPERVISOR_SANDBOX_IMAGE: tags.v1,
        HYPERVISOR_PUBLIC_ORIGIN: ORIGIN,
        HYPERVISOR_DRAIN_MS: String(DRAIN_MS),
      },
    });
    for (const name of users) {
      assert.equal((await t.operator.post("/users", { name })).status, 201);
      cookies.set(name, `hv_session=${t.daemon.services.sessions.create(name, "full").token}`);
    }
  });
  after(async () => {
    await t?.close();
    await removeRunArtifacts(runId);
    for (const tag of Object.values(tags)) await podman("rmi", "-f", tag).catch(() => undefined);
    await service.dispose();
  });

  it("serves every request through deploy → swap → rollback → swap, switching generation once per step", async () => {
    const g1 = (await t.operator.get("/generations")).body.generations[0].id as number;
    const g2 = (await t.operator.post("/generations", { image: tags.v2 })).body.generation.id as number;
    const loops = users.flatMap((u) => [0, 1].map(() => ({ user: u, loop: new LoadLoop(t.publicUrl, "/whoami", cookies.get(u)!) })));
    for (const { loop } of loops) loop.start();
    await sleep(500);

    const step = async (path: string, body: unknown) => {
      const res = await t.operator.post(path, body);
      assert.equal(res.status, 200, `${path}: ${JSON.stringify(res.body)}`);
      await sleep(700);
      return res;
    };
    await step("/deploy", { generation: g2 });
    await step("/swap", {});
    await t.operator.post(`/generations/${g1}/known-good`);
    const rollback = await step("/rollback", {});
    assert.ok(rollback.body.results.every((r: { path: string }) => r.path === "warm"));
    await step("/swap", {});

    const failures: string[] = [];
    for (const { user, loop } of loops) {
      const samples = await loop.stop();
      assert.ok(samples.length > 20, `${user} made ${samples.length} requests`);
      for (const s of samples) if (s.status !== 200) failures.push(`${user}: ${s.status} ${s.error ?? ""}`);
      assert.deepEqual(runs(samples.map((s) => s.generation)), [g1, g2, g1, g2].map(String), `${user}'s generations in request order`);
    }
    assert.deepEqual(failures, [], "not one request failed");
  });

  it("keeps a WebSocket on the old target working through the drain window, then closes it with 1012", async () => {
    const user = users[0]!;
    const ws = new WebSocket(`${t.publicUrl.replace("http", "ws")}/ws/echo`, { headers: { cookie: cookies.get(user)!, origin: ORIGIN } });
    await once(ws, "open");
    const echo = async (text: string) => {
      const reply = once(ws, "message");
      ws.send(text);
      return String((await reply)[0]);
    };
    assert.equal(await echo("before"), "before");
    const closed = once(ws, "close");
    const swappedAt = Date.now();
    assert.equal((await t.operator.post("/swap", { users: [user] })).status, 200);
    await sleep(DRAIN_MS / 3);
    assert.equal(await echo("during the drain"), "during the drain");
    const [code] = await closed;
    assert.equal(code, 1012);
    assert.ok(Date.now() - swappedAt >= DRAIN_MS - 50, "not before the drain window passed");
  });

  it("rolls back cold within the deadline when the known-good sandbox was removed", async () => {
    const user = users[1]!;
    const { manager, runtime, routing, users: directory } = t.daemon.services;
    const liveGeneration = routing.generationOf(user, "live");
    const target = (await t.operator.get("/generations")).body.generations.find(
      (g: { id: number; state: string }) => g.state === "known-good" && g.id !== liveGeneration,
    );
    assert.ok(target, "a known-good generation other than live's exists");
    // The dev slot holds something else, and no sandbox of the known-good one exists.
    await directory.withUserLock(user, () => manager.assignGeneration(user, routing.slotOf(user, "dev"), liveGeneration));
    await runtime.remove(user, routing.slotOf(user, "dev"), { removeData: false });
    const loop = new LoadLoop(t.publicUrl, "/whoami", cookies.get(user)!).start();
    const res = await t.operator.post("/rollback", { users: [user] });
    const samples = await loop.stop();
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.results[0].path, "cold");
    assert.equal(res.body.results[0].to.generation, target.id);
    assert.ok(res.body.durationMs < 10_000);
    assert.deepEqual(
      samples.filter((s) => s.status !== 200),
      [],
      "live kept serving during the cold start",
    );
  });
});

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { referenceSandboxCommand } from "../../hypervisor/generations/default-generation.js";
import { bootDaemon, sandboxDataDir, type TestDaemon } from "../helpers/daemon.js";
import { LoadLoop, runs } from "../helpers/load.js";
import { testUser } from "../helpers/run-id.js";
import { baseUrl } from "../helpers/sandbox-client.js";
import { ReconnectingSocket } from "../helpers/ws-client.js";

const ORIGIN = "http://hv.test";
const sandbox = referenceSandboxCommand();
const generation = (version: string, ...flags: string[]) => ({
  command: [...sandbox.command.filter((a) => !a.startsWith("--version=")), `--version=${version}`, ...flags],
  version,
});

describe("promote, rollback with data and fork (process runtime, through the public proxy)", () => {
  let t: TestDaemon;
  const [uLoad, uBad, uCorrupt, uFork] = ["pro-load", "pro-bad", "pro-corrupt", "pro-fork"].map(testUser) as [string, string, string, string];
  const users = [uLoad, uBad, uCorrupt, uFork];
  const cookies = new Map<string, string>();
  let g1: number;
  let g2: number;
  let gBad: number;
  let gCorrupt: number;

  const endpoint = async (user: string, role: "live" | "dev") => (await t.daemon.services.manager.ensure(user, role)).endpoint;
  const bump = async (user: string, role: "live" | "dev", times = 1) => {
    let n = 0;
    for (let i = 0; i < times; i++)
      n = ((await (await fetch(`${baseUrl(await endpoint(user, role))}/counter`, { method: "POST" })).json()) as { count: number }).count;
    return n;
  };
  /** The counter as the user's browser sees it: through the public proxy, live or dev. */
  const seen = async (user: string, role: "live" | "dev" = "live") => {
    const res = await fetch(`${t.publicUrl}${role === "dev" ? "/dev" : ""}/counter`, { headers: { cookie: cookies.get(user)! } });
    assert.equal(res.status, 200);
    return { count: ((await res.json()) as { count: number }).count, generation: Number(res.headers.get("x-hypervisor-generation")) };
  };
  const slotData = (user: string, role: "live" | "dev") => join(sandboxDataDir(t.stateDir), `${user}-${t.daemon.services.routing.slotOf(user, role)}`);

  before(async () => {
    t = await bootDaemon({
      env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN, HYPERVISOR_START_TIMEOUT_MS: "5000", HYPERVISOR_PROMOTE_DEADLINE_MS: "20000", HYPERVISOR_DRAIN_MS: "1000" },
    });
    for (const name of users) {
      assert.equal((await t.operator.post("/users", { name })).status, 201);
      cookies.set(name, `hv_session=${t.daemon.services.sessions.create(name, "full").token}`);
    }
    g1 = (await t.operator.get("/generations")).body.generations[0].id;
    g2 = (await t.operator.post("/generations", generation("2"))).body.generation.id;
    gBad = (await t.operator.post("/generations", generation("bad", "--rewrite-data", "--fail-health"))).body.generation.id;
    gCorrupt = (await t.operator.post("/generations", generation("corrupt", "--rewrite-data"))).body.generation.id;
  });
  after(async () => {
    for (const user of users) for (const role of ["live", "dev"] as const) await t?.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t?.close();
  });

  it("promotes under keep-alive load and a WebSocket: no failed request, the new generation on live's own data, 1012 and a reconnect", async () => {
    assert.equal(await bump(uLoad, "live", 5), 5);
    assert.equal((await t.operator.post("/deploy", { generation: g2, users: [uLoad] })).status, 200);
    assert.equal(await bump(uLoad, "dev", 2), 2);
    const loops = [0, 1].map(() => new LoadLoop(t.publicUrl, "/whoami", cookies.get(uLoad)!).start());
    const socket = await new ReconnectingSocket(t.publicUrl, "/ws/echo", { cookie: cookies.get(uLoad)!, origin: ORIGIN }).start();
    await sleep(300);
    const liveSlot = t.daemon.services.routing.slotOf(uLoad, "live");

    const res = await t.operator.post("/promote", { users: [uLoad] });
    await sleep(500);
    const samples = (await Promise.all(loops.map((l) => l.stop()))).flat();
    await socket.stop();

    assert.equal(res.status, 200, JSON.stringify(res.body));
    const [result] = res.body.results;
    assert.deepEqual(
      [result.from, result.to],
      [
        { slot: liveSlot, generation: g1 },
        { slot: liveSlot, generation: g2 },
      ],
    );
    assert.deepEqual(
      samples.filter((s) => s.status !== 200),
      [],
      "not one request failed",
    );
    for (const loop of loops) assert.deepEqual(runs(loop.samples.map((s) => Number(s.generation))), [g1, g2]);
    assert.ok(socket.closeCodes.includes(1012), `close codes ${socket.closeCodes.join()}`);
    assert.ok(socket.opens >= 2, "the WebSocket reconnected");
    // Live's data continues under the new generation; dev's is not in live.
    assert.deepEqual(await seen(uLoad), { count: 5, generation: g2 });
    assert.equal(await bump(uLoad, "live"), 6);
    assert.equal(t.daemon.services.routing.slotOf(uLoad, "live"), liveSlot, "promote flips no route");
    const point = t.daemon.services.snapshots.list(uLoad).find((s) => s.id === result.snapshot)!;
    assert.equal(point.reason, "pre-promote");
    assert.equal(point.generation, g1);
    const audit = (await t.operator.get("/audit")).body.entries as { action: string; outcome: string }[];
    assert.ok(audit.some((e) => e.action === "promote" && e.outcome === "ok"));
  });

  it("backs out a candidate that rewrites /data and never becomes healthy: the old generation on exactly its old data, the rewrite kept", async () => {
    assert.equal(await bump(uBad, "live", 3), 3);
    const before = readFileSync(join(slotData(uBad, "live"), "counter"), "utf8");
    // Deploying it fails its health check; dev keeps the generation all the same.
    await t.operator.post("/deploy", { generation: gBad, users: [uBad] });
    const loop = new LoadLoop(t.publicUrl, "/whoami", cookies.get(uBad)!).start();
    const res = await t.operator.post("/promote", { users: [uBad] });
    const samples = await loop.stop();

    assert.notEqual(res.status, 200);
    const result = res.body.error ? res.body.error.details.results[0] : res.body.results[0];
    assert.equal(result.backedOut, true, JSON.stringify(res.body));
    assert.deepEqual(
      samples.filter((s) => s.status !== 200),
      [],
      "held, then served by the old generation",
    );
    assert.ok(samples.every((s) => Number(s.generation) === g1));
    assert.deepEqual(await seen(uBad), { count: 3, generation: g1 });
    assert.equal(readFileSync(join(slotData(uBad, "live"), "counter"), "utf8"), before);
    const kept = t.daemon.services.snapshots.list(uBad).find((s) => s.id === result.kept)!;
    assert.equal(kept.reason, "pre-restore");
    assert.equal(kept.generation, gBad);
    const keptDir = join(sandboxDataDir(t.stateDir), ".snapshots", `${uBad}-${kept.slot}`, kept.id);
    assert.equal(readFileSync(join(keptDir, "counter"), "utf8").trim(), "-1");
    assert.equal(readFileSync(join(keptDir, "rewritten-by"), "utf8").trim(), "bad");
  });

  it("rollback --data after a release that corrupts the data: the known-good generation with the data as at the promotion, the corrupted data kept", async () => {
    assert.equal(await bump(uCorrupt, "live", 4), 4);
    await t.operator.post(`/generations/${g1}/known-good`);
    assert.equal((await t.operator.post("/deploy", { generation: gCorrupt, users: [uCorrupt] })).status, 200);
    const promoted = await t.operator.post("/promote", { users: [uCorrupt] });
    assert.equal(promoted.status, 200, JSON.stringify(promoted.body));
    assert.deepEqual(await seen(uCorrupt), { count: -1, generation: gCorrupt });

    const res = await t.operator.post("/rollback", { users: [uCorrupt], data: true });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const [result] = res.body.results;
    assert.equal(result.to.generation, g1);
    assert.equal(result.snapshot, promoted.body.results[0].snapshot, "the data of the promotion's rollback point");
    assert.deepEqual(await seen(uCorrupt), { count: 4, generation: g1 });
    const kept = t.daemon.services.snapshots.list(uCorrupt).find((s) => s.id === result.kept)!;
    assert.equal(kept.reason, "pre-rollback");
    assert.equal(kept.generation, gCorrupt);

    // Without data it is today's rollback: refused here, as live already runs the known-good one.
    assert.equal((await t.operator.post("/rollback", { users: [uCorrupt], data: true, to: g1 })).status, 409);
  });

  it("forks live's data into dev, keeping dev's own as a snapshot", async () => {
    assert.equal(await bump(uFork, "live", 7), 7);
    assert.equal(await bump(uFork, "dev", 1), 1);
    const liveSlot = t.daemon.services.routing.slotOf(uFork, "live");
    const liveBefore = await t.daemon.services.runtime.inspect(uFork, liveSlot);
    const res = await t.operator.post(`/users/${uFork}/fork`, { from: "live", to: "dev" });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    // Live was frozen for the copy, not stopped: the same process, running again.
    const liveAfter = await t.daemon.services.runtime.inspect(uFork, liveSlot);
    assert.equal(liveAfter?.id, liveBefore?.id, "live's sandbox is the one that ran before the fork");
    assert.equal(liveAfter?.running, true);
    assert.equal(t.daemon.services.manager.isFrozen(uFork, liveSlot), false, "thawed after the copy");
    assert.equal((await seen(uFork, "dev")).count, 7);
    assert.equal((await seen(uFork, "live")).count, 7);
    assert.equal(await bump(uFork, "dev"), 8);
    assert.equal((await seen(uFork, "live")).count, 7, "live's data is its own");
    const snapshots = t.daemon.services.snapshots.list(uFork);
    assert.equal(snapshots.find((s) => s.id === res.body.snapshot)?.reason, "fork");
    const kept = snapshots.find((s) => s.id === res.body.kept)!;
    assert.equal(readFileSync(join(sandboxDataDir(t.stateDir), ".snapshots", `${uFork}-${kept.slot}`, kept.id, "counter"), "utf8").trim(), "1");
  });

  it("deploy --with-live-data gives the new dev a copy of live's data", async () => {
    const res = await t.operator.post("/deploy", { generation: g2, users: [uFork], withLiveData: true });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.results[0].to.generation, g2);
    assert.deepEqual(await seen(uFork, "dev"), { count: 7, generation: g2 });
  });
});

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { buildSandboxImage } from "../../sandbox/build-image.js";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { LoadLoop, runs } from "../helpers/load.js";
import { podman, podmanForSuite, removeRunArtifacts } from "../helpers/podman.js";
import { exportInto } from "../helpers/snapshot-export.js";
import { runId, testUser } from "../helpers/run-id.js";
import { baseUrl } from "../helpers/sandbox-client.js";
import { SimHost } from "../helpers/sim-hosts.js";
import { treeDigest } from "../helpers/tree-digest.js";

const { skip, service } = await podmanForSuite();
const ORIGIN = "http://hv.test";

interface SnapshotRow {
  id: string;
  slot: string;
  reason: string;
  method: string;
  sizeBytes: number;
  generation: number;
}

describe("snapshots, promote and rollback with data for a user on a remote Podman host (tcp, its own store)", { skip, timeout: 600_000 }, () => {
  const host = new SimHost("rs1");
  const tags = { v1: `localhost/hv-test-${runId}:rsnap1`, v2: `localhost/hv-test-${runId}:rsnap2` };
  const [user, neighbour] = [testUser("rsnap"), testUser("rsnap-nb")] as [string, string];
  const state = tempDir();
  let t: TestDaemon;
  let cookie: string;
  let g1: number;
  const env = () => ({
    HYPERVISOR_RUNTIME: "podman",
    HYPERVISOR_PODMAN_SOCKET: service.socketPath,
    HYPERVISOR_SANDBOX_IMAGE: tags.v1,
    HYPERVISOR_PUBLIC_ORIGIN: ORIGIN,
    HYPERVISOR_PROMOTE_DEADLINE_MS: "60000",
  });

  const endpoint = async (name = user, role: "live" | "dev" = "live") => (await t.daemon.services.manager.ensure(name, role)).endpoint;
  const bump = async (name = user, times = 1) => {
    let n = 0;
    for (let i = 0; i < times; i++)
      n = ((await (await fetch(`${baseUrl(await endpoint(name))}/counter`, { method: "POST" })).json()) as { count: number }).count;
    return n;
  };
  const count = async () => ((await (await fetch(`${baseUrl(await endpoint())}/counter`)).json()) as { count: number }).count;
  const snapshots = async () => (await t.operator.get<{ snapshots: SnapshotRow[] }>(`/users/${user}/snapshots`)).body.snapshots;
  /** A volume's files on the simulated host, read from its store directly: a witness that is not the hypervisor. */
  const volumeDir = async (name: string) => (await host.podman("volume", "inspect", "--format", "{{.Mountpoint}}", name)).trim();
  const exported = async (id: string) => {
    const { status, dir } = await exportInto(t.daemon.operatorSocket, `/users/${user}/snapshots/${id}/export`);
    assert.equal(status, 200);
    return dir;
  };

  before(async () => {
    if (skip) return;
    await host.startNetns(4);
    for (const [version, tag] of Object.entries(tags)) await buildSandboxImage({ tag, version, labels: { "io.hypervisor.test-run": runId } });
    t = await bootDaemon({ stateDir: state.path, env: env() });
    const added = await t.operator.post("/hosts", { name: host.name, url: host.url, address: host.address, capacity: 4 });
    assert.equal(added.status, 201, JSON.stringify(added.body));
    assert.equal((await t.operator.post("/hosts/local/cordon")).status, 200);
    for (const name of [user, neighbour]) assert.equal((await t.operator.post("/users", { name })).status, 201);
    cookie = `hv_session=${t.daemon.services.sessions.create(user, "full").token}`;
    g1 = t.daemon.services.routing.generationOf(user, "live");
  });
  after(async () => {
    await t?.close();
    await host.dispose();
    for (const tag of Object.values(tags)) await podman("rmi", "-f", tag).catch(() => undefined);
    await removeRunArtifacts(runId);
    state.remove();
  });

  it("snapshots the data as a volume on the user's host, restores it keeping the data it replaced, and exports that user's data only", async () => {
    assert.equal(await bump(neighbour, 9), 9);
    assert.equal(await bump(user, 3), 3);
    assert.equal(t.daemon.services.fleet?.hostOf(user), host.name);
    const slot = t.daemon.services.routing.slotOf(user, "live");

    const taken = await t.operator.post<{ snapshot: SnapshotRow }>(`/users/${user}/snapshots`, { slot: "live" });
    assert.equal(taken.status, 201, JSON.stringify(taken.body));
    const first = taken.body.snapshot;
    assert.equal(first.method, "copy");
    const volume = `hv-${user}-${slot}-snap-${first.id}`;
    assert.ok((await host.volumes(user)).includes(volume), "the snapshot is a volume on the user's host");
    const snapshotDir = await volumeDir(volume);
    assert.equal(readFileSync(join(snapshotDir, "counter"), "utf8").trim(), "3");
    const files = readdirSync(snapshotDir, { withFileTypes: true }).filter((e) => e.isFile());
    assert.equal(
      first.sizeBytes,
      files.map((e) => readFileSync(join(snapshotDir, e.name)).length).reduce((a, b) => a + b, 0),
      "the size of the files copied",
    );

    assert.equal(await bump(), 4);
    const restored = await t.operator.post<{ kept: SnapshotRow }>(`/users/${user}/snapshots/${first.id}/restore`, {});
    assert.equal(restored.status, 200, JSON.stringify(restored.body));
    assert.equal(await count(), 3);
    assert.equal(restored.body.kept.reason, "pre-restore");
    assert.equal(restored.body.kept.method, "copy");
    assert.equal(readFileSync(join(await volumeDir(`hv-${user}-${slot}-snap-${restored.body.kept.id}`), "counter"), "utf8").trim(), "4");

    const dir = await exported(first.id);
    try {
      assert.deepEqual(treeDigest(dir), treeDigest(snapshotDir), "the export is the snapshot's tree, byte for byte");
      assert.equal(readFileSync(join(dir, "counter"), "utf8").trim(), "3");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const kept = await exported(restored.body.kept.id);
    try {
      assert.equal(readFileSync(join(kept, "counter"), "utf8").trim(), "4");
    } finally {
      rmSync(kept, { recursive: true, force: true });
    }
    // The neighbour on the same host kept their own data throughout.
    assert.equal(await bump(neighbour), 10);
  });

  it("deletes a snapshot's volume with its record", async () => {
    const slot = t.daemon.services.routing.slotOf(user, "live");
    const taken = await t.operator.post<{ snapshot: SnapshotRow }>(`/users/${user}/snapshots`, { slot: "live" });
    assert.equal(taken.status, 201, JSON.stringify(taken.body));
    assert.equal((await t.operator.send("DELETE", `/users/${user}/snapshots/${taken.body.snapshot.id}`)).status, 200);
    assert.ok(!(await host.volumes(user)).includes(`hv-${user}-${slot}-snap-${taken.body.snapshot.id}`));
    assert.ok(!(await snapshots()).some((s) => s.id === taken.body.snapshot.id));
  });

  it("promotes under load on live's own volume, then rollback --data brings back the data as at the promotion", async () => {
    const g2 = (await t.operator.post("/generations", { image: tags.v2 })).body.generation.id as number;
    assert.equal((await t.operator.post(`/generations/${g1}/known-good`)).status, 200);
    assert.equal((await t.operator.post("/deploy", { generation: g2, users: [user] })).status, 200);
    const loop = new LoadLoop(t.publicUrl, "/whoami", cookie).start();
    await sleep(300);
    const promoted = await t.operator.post("/promote", { users: [user] });
    await sleep(300);
    const samples = await loop.stop();
    assert.equal(promoted.status, 200, JSON.stringify(promoted.body));
    assert.deepEqual(
      samples.filter((s) => s.status !== 200),
      [],
    );
    assert.deepEqual(runs(samples.map((s) => Number(s.generation))), [g1, g2]);
    const point = (await snapshots()).find((s) => s.id === promoted.body.results[0].snapshot)!;
    assert.equal(point.reason, "pre-promote");
    assert.equal(point.method, "copy");
    // The new release rewrites the data.
    assert.equal(await count(), 3);
    assert.equal(await bump(user, 4), 7);

    const back = await t.operator.post("/rollback", { users: [user], data: true });
    assert.equal(back.status, 200, JSON.stringify(back.body));
    const [result] = back.body.results;
    assert.equal(result.to.generation, g1);
    assert.equal(result.snapshot, point.id);
    assert.equal(t.daemon.services.routing.generationOf(user, "live"), g1);
    assert.equal(await count(), 3);
    const kept = (await snapshots()).find((s) => s.id === result.kept)!;
    assert.equal(kept.reason, "pre-rollback");
    const dir = await exported(kept.id);
    try {
      assert.equal(readFileSync(join(dir, "counter"), "utf8").trim(), "7");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("forks live's data into dev on the same host, dev's own kept as a snapshot", async () => {
    const dev = async () => ((await (await fetch(`${baseUrl(await endpoint(user, "dev"))}/counter`)).json()) as { count: number }).count;
    await fetch(`${baseUrl(await endpoint(user, "dev"))}/counter`, { method: "POST" });
    const devBefore = await dev();
    assert.notEqual(devBefore, await count());
    const liveSlot = t.daemon.services.routing.slotOf(user, "live");
    const liveBefore = await t.daemon.services.runtime.inspect(user, liveSlot);
    const res = await t.operator.post(`/users/${user}/fork`, { from: "live", to: "dev" });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    // Live was paused for the copy, not stopped: the same container, running again.
    const liveAfter = await t.daemon.services.runtime.inspect(user, liveSlot);
    assert.equal(liveAfter?.id, liveBefore?.id);
    assert.equal(liveAfter?.running, true);
    assert.equal(await dev(), await count());
    assert.equal((await snapshots()).find((s) => s.id === res.body.snapshot)?.reason, "fork");
    const kept = (await snapshots()).find((s) => s.id === res.body.kept)!;
    assert.equal(kept.slot, t.daemon.services.routing.slotOf(user, "dev"));
    const dir = await exported(kept.id);
    try {
      assert.equal(readFileSync(join(dir, "counter"), "utf8").trim(), String(devBefore));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("after a crash, removes snapshot volumes never recorded and undoes a restore caught before its end", async () => {
    await t.daemon.services.manager.stop(user, "live");
    const slot = t.daemon.services.routing.slotOf(user, "live");
    const before = (await snapshots()).map((s) => `hv-${user}-${s.slot}-snap-${s.id}`);
    await t.close();
    // What a SIGKILL can leave: a half-written snapshot volume, and a restore that copied the data
    // aside (to an unrecorded snapshot), left its marker, and had begun rewriting the data volume.
    const labels = ["--label", `io.hypervisor.user=${user}`, "--label", `io.hypervisor.slot=${slot}`];
    await host.podman("volume", "create", ...labels, "--label", "io.hypervisor.snapshot=0123456789ab", `hv-${user}-${slot}-snap-0123456789ab`);
    await host.podman("volume", "create", ...labels, "--label", "io.hypervisor.snapshot=ba9876543210", `hv-${user}-${slot}-snap-ba9876543210`);
    const data = await volumeDir(`hv-${user}-${slot}-data`);
    const counter = readFileSync(join(data, "counter"), "utf8");
    const tarball = join(state.path, "aside.tar");
    assert.equal(spawnSync("tar", ["-C", data, "-cf", tarball, "."]).status, 0);
    await host.podman("volume", "import", `hv-${user}-${slot}-snap-ba9876543210`, tarball);
    await host.podman("volume", "create", ...labels, "--label", "io.hypervisor.snapshot.restoring=ba9876543210", `hv-${user}-${slot}-snap-restoring`);
    writeFileSync(join(data, "counter"), "half\n");

    t = await bootDaemon({ stateDir: state.path, env: env() });
    const left = async () => (await host.volumes(user)).filter((v) => v.includes("-snap-")).sort();
    const expected = before.sort();
    for (let i = 0; i < 200 && (await left()).join() !== expected.join(); i++) await sleep(100);
    assert.deepEqual(await left(), expected);
    assert.equal(await count(), Number(counter.trim()));
  });
});

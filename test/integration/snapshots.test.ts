import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { loopFs, type LoopFs, type LoopFsKind } from "../helpers/loop-fs.js";
import { exportInto } from "../helpers/snapshot-export.js";
import { testUser } from "../helpers/run-id.js";
import { baseUrl } from "../helpers/sandbox-client.js";
import { treeDigest } from "../helpers/tree-digest.js";

async function counter(endpoint: { host: string; port: number }, method: "GET" | "POST" = "GET"): Promise<number> {
  const res = await fetch(`${baseUrl(endpoint)}/counter`, { method });
  assert.equal(res.status, 200);
  return ((await res.json()) as { count: number }).count;
}

/** What each file system's first snapshot of a slot's data is made with (on btrfs a subvolume from its creation: its disk's qgroup). */
const FIRST_METHOD: Record<LoopFsKind, string> = { btrfs: "btrfs", xfs: "reflink", ext4: "copy" };

for (const kind of ["btrfs", "xfs", "ext4"] as const) {
  describe(`snapshots of process sandbox data on ${kind} (a loop file system of the test's own)`, () => {
    let fs: LoopFs;
    let t: TestDaemon;
    const state = tempDir();
    let dataRoot: string;
    const ua = testUser(`snap-${kind}-a`);
    const ub = testUser(`snap-${kind}-b`);
    const env = () => ({ HYPERVISOR_SANDBOX_DATA_DIR: dataRoot, HYPERVISOR_SNAPSHOT_KEEP: "3" });
    const area = (user: string, slot = "a") => join(dataRoot, ".snapshots", `${user}-${slot}`);
    const data = (user: string, slot = "a") => join(dataRoot, `${user}-${slot}`);
    const live = async (user = ua) => (await t.daemon.services.manager.ensure(user, "live")).endpoint;
    let first: { id: string; method: string };

    before(async () => {
      fs = loopFs(kind);
      dataRoot = join(fs.mount, "sandboxes");
      t = await bootDaemon({ stateDir: state.path, env: env() });
      for (const name of [ua, ub]) assert.equal((await t.operator.post("/users", { name })).status, 201);
    });
    after(async () => {
      for (const user of [ua, ub]) for (const role of ["live", "dev"] as const) await t?.daemon.services.manager.stop(user, role).catch(() => undefined);
      await t?.close();
      fs?.remove();
      state.remove();
    });

    it(`copies a running slot while it is stopped, by ${FIRST_METHOD[kind]}, byte-identical to its data, and starts it again`, async () => {
      const endpoint = await live();
      for (let i = 0; i < 3; i++) await counter(endpoint, "POST");
      // 16 MiB of data the copy has to carry, beside the sandbox's own files.
      writeFileSync(
        join(data(ua), "blob"),
        createHash("sha512")
          .update(kind)
          .digest()
          .toString("hex")
          .repeat(128 * 1024),
      );
      const before = treeDigest(data(ua));
      const res = await t.operator.post(`/users/${ua}/snapshots`, { slot: "live" });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      first = res.body.snapshot;
      assert.equal(first.method, FIRST_METHOD[kind]);
      assert.equal(res.body.snapshot.reason, "manual");
      assert.ok(res.body.snapshot.sizeBytes >= 16 * 1024 * 1024);
      assert.deepEqual(treeDigest(join(area(ua), first.id)), before);
      // Started again, on the same data.
      assert.equal(await counter(await live()), 3);
      const list = await t.operator.get(`/users/${ua}/snapshots`);
      assert.deepEqual(
        list.body.snapshots.map((s: { id: string }) => s.id),
        [first.id],
      );
    });

    it("restores a snapshot and keeps the data it replaced as a pre-restore snapshot", async () => {
      assert.equal(await counter(await live(), "POST"), 4);
      const res = await t.operator.post(`/users/${ua}/snapshots/${first.id}/restore`, {});
      assert.equal(res.status, 200, JSON.stringify(res.body));
      // On btrfs the first snapshot is a subvolume: restoring it is a snapshot of it.
      assert.equal(res.body.method, kind === "btrfs" ? "btrfs" : FIRST_METHOD[kind]);
      assert.equal(res.body.kept.reason, "pre-restore");
      assert.equal(res.body.kept.method, "move");
      assert.equal(await counter(await live()), 3);
      assert.equal(readFileSync(join(area(ua), res.body.kept.id, "counter"), "utf8").trim(), "4");
      if (kind === "btrfs") {
        // The data is a subvolume now, so the next snapshot is a btrfs snapshot.
        const again = await t.operator.post(`/users/${ua}/snapshots`, { slot: "a" });
        assert.equal(again.status, 201);
        assert.equal(again.body.snapshot.method, "btrfs");
        assert.equal(readFileSync(join(area(ua), again.body.snapshot.id, "counter"), "utf8").trim(), "3");
      }
    });

    it("exports a snapshot as a tar of exactly that user's data", async () => {
      const { status, dir } = await exportInto(t.daemon.operatorSocket, `/users/${ua}/snapshots/${first.id}/export`);
      try {
        assert.equal(status, 200);
        const exported = treeDigest(dir);
        const snapshot = treeDigest(join(area(ua), first.id));
        // tar's root entry "." takes the mode and owner of the snapshot's root too.
        assert.deepEqual(exported, snapshot);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it("never lists, restores, exports, pins or deletes one user's snapshot through another user's name", async () => {
      await live(ub);
      const other = `/users/${ub}/snapshots/${first.id}`;
      assert.equal((await t.operator.get(`/users/${ub}/snapshots`)).body.snapshots.length, 0);
      assert.equal((await t.operator.post(`${other}/restore`, {})).status, 404);
      assert.equal((await t.operator.post(`${other}/pin`)).status, 404);
      assert.equal((await t.operator.send("DELETE", other)).status, 404);
      const exported = await exportInto(t.daemon.operatorSocket, `${other}/export`);
      rmSync(exported.dir, { recursive: true, force: true });
      assert.equal(exported.status, 404);
      assert.ok(existsSync(join(area(ua), first.id)));
      assert.ok([400, 404].includes((await t.operator.get(`/users/${ua}/snapshots/..%2F..%2Fetc/export`)).status));
    });

    it("keeps HYPERVISOR_SNAPSHOT_KEEP automatic snapshots, pinned ones besides, and deletes on request", async () => {
      const pinned = await t.operator.post(`/users/${ua}/snapshots/${first.id}/pin`);
      assert.equal(pinned.body.snapshot.pinned, true);
      // Four restores of the same snapshot: four pre-restore snapshots, of which three are kept.
      for (let i = 0; i < 4; i++) assert.equal((await t.operator.post(`/users/${ua}/snapshots/${first.id}/restore`, {})).status, 200);
      const all = (await t.operator.get(`/users/${ua}/snapshots`)).body.snapshots as { id: string; reason: string; pinned: boolean }[];
      assert.equal(all.filter((s) => s.reason === "pre-restore").length, 3);
      assert.ok(all.some((s) => s.id === first.id && s.pinned));
      const onDisk = readdirSync(area(ua)).sort();
      assert.deepEqual(onDisk, all.map((s) => s.id).sort());
      const doomed = all.find((s) => s.reason === "pre-restore")!;
      assert.equal((await t.operator.send("DELETE", `/users/${ua}/snapshots/${doomed.id}`)).status, 200);
      assert.ok(!existsSync(join(area(ua), doomed.id)));
      assert.equal((await t.operator.get(`/users/${ua}/snapshots/${doomed.id}/export`)).status, 404);
    });

    it("purges a user's snapshots with the user's data, so a later user of that name never sees them", async () => {
      const taken = await t.operator.post(`/users/${ub}/snapshots`, { slot: "live" });
      assert.equal(taken.status, 201);
      assert.ok(existsSync(join(area(ub), taken.body.snapshot.id)));
      assert.equal((await t.operator.send("DELETE", `/users/${ub}?purge=true&confirm=true`)).status, 200);
      assert.ok(!existsSync(area(ub)), "the snapshot directory is gone");
      assert.equal((await t.operator.post("/users", { name: ub })).status, 201);
      assert.deepEqual((await t.operator.get(`/users/${ub}/snapshots`)).body.snapshots, []);
    });

    it("after a crash, removes half-written snapshots and undoes a restore caught between its renames", async () => {
      await t.daemon.services.manager.stop(ua, "live");
      const count = readFileSync(join(data(ua), "counter"), "utf8");
      await t.close();
      // What a SIGKILL can leave: a copy under its temporary name, a complete one not yet recorded,
      // and a restore that moved the data away but had not moved the new data in.
      mkdirSync(join(area(ua), ".tmp-0123456789ab"));
      writeFileSync(join(area(ua), ".tmp-0123456789ab", "half"), "x");
      mkdirSync(join(area(ua), "0123456789ab"));
      mkdirSync(join(area(ua), ".incoming"));
      renameSync(data(ua), join(area(ua), ".replaced"));
      t = await bootDaemon({ stateDir: state.path, env: env() });
      const recorded = ((await t.operator.get(`/users/${ua}/snapshots`)).body.snapshots as { id: string }[]).map((s) => s.id).sort();
      for (let i = 0; i < 200 && readdirSync(area(ua)).sort().join() !== recorded.join(); i++) await sleep(50);
      assert.deepEqual(readdirSync(area(ua)).sort(), recorded);
      assert.equal(readFileSync(join(data(ua), "counter"), "utf8"), count);
      assert.equal(String(await counter(await live())), count.trim());
    });
  });
}

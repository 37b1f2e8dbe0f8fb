// DESIGN §8b on the process runtime: where the sandbox data dir is on btrfs, each sandbox's disk
// (HYPERVISOR_SANDBOX_DISK) is a qgroup limit the kernel enforces. A hostile sandbox on a loop
// btrfs of the test's own writes past its disk, in one file and in many: its writes fail at the
// limit, at once, not at the next periodic measure; it cannot get space outside its qgroup with a
// subvolume or a snapshot of its own; another sandbox on the same file system still writes; the
// daemon keeps answering; the limit follows the slot's data through a restore; and past its
// files (which no qgroup counts) the periodic measure stops it, with a reason its user sees on the
// account page and the operator in the sandbox listing. A data dir from before (a plain directory)
// becomes a subvolume at its next start, its files kept, also after a crash mid-way.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Endpoint } from "../../proxy/target.js";
import { referenceSandboxCommand } from "../../hypervisor/generations/default-generation.js";
import { ProcessRuntime } from "../../hypervisor/runtime/process/process-runtime.js";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
import { removeSandboxGroups } from "../helpers/cgroups.js";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { loopFs, type LoopFs } from "../helpers/loop-fs.js";
import { repoRoot } from "../helpers/paths.js";
import { runId, testUser } from "../helpers/run-id.js";
import { baseUrl } from "../helpers/sandbox-client.js";

const hogScript = join(repoRoot, "dist/test/fixtures/resource-hog.js");
const ORIGIN = "http://hv.test";
const MiB = 1024 * 1024;
const DISK = 32 * MiB;
/** What btrfs may allocate beyond the data a qgroup lets through (its accounting is in extents, metadata included). */
const SLACK = MiB;

const btrfs = (...args: string[]) => execFileSync("btrfs", args, { encoding: "utf8" });

/** The kernel's own record of a subvolume's qgroup: its id, the bytes it references, and its limit. */
function qgroupOf(path: string): { id: string; referenced: number; limit: string } {
  const id = `0/${btrfs("inspect-internal", "rootid", path).trim()}`;
  btrfs("filesystem", "sync", path);
  const row = btrfs("qgroup", "show", "-r", "--raw", path)
    .split("\n")
    .map((line) => line.trim().split(/\s+/))
    .find((cols) => cols[0] === id);
  assert.ok(row, `qgroup ${id} of ${path} is listed`);
  return { id, referenced: Number(row[1]), limit: row[3]! };
}

/** Bytes the file system has allocated to a tree, as the host sees them. */
function allocated(path: string): number {
  return Number(execFileSync("du", ["-s", "-B1", "--", path], { encoding: "utf8" }).split("\t")[0]);
}

describe(
  "a hostile process sandbox against its disk on btrfs: a qgroup limit (DESIGN §8b)",
  { skip: process.getuid?.() === 0 ? false : "needs root: loop devices, qgroups" },
  () => {
    let fs: LoopFs;
    let t: TestDaemon;
    let dataRoot: string;
    const mallory = testUser("quota-mallory");
    const bob = testUser("quota-bob");
    let malloryClient: PublicClient;
    const endpoints = new Map<string, Endpoint>();
    const slots = new Map<string, string>();
    const data = (user: string) => join(dataRoot, `${user}-${slots.get(user)}`);
    const start = async (user: string) => {
      const started = await t.operator.post<{ sandbox: { endpoint: Endpoint; slot: string } }>(`/sandboxes/${user}/dev/start`);
      assert.equal(started.status, 200, JSON.stringify(started.body));
      endpoints.set(user, started.body.sandbox.endpoint);
      slots.set(user, started.body.sandbox.slot);
    };
    const attack = async <T>(user: string, path: string): Promise<T> => {
      const res = await fetch(`${baseUrl(endpoints.get(user)!)}${path}`, { signal: AbortSignal.timeout(60_000) });
      assert.equal(res.status, 200, await res.clone().text());
      return (await res.json()) as T;
    };
    const answers = async () => assert.equal((await t.operator.get("/status")).status, 200, "the hypervisor answers");

    before(async () => {
      fs = loopFs("btrfs");
      dataRoot = join(fs.mount, "sandboxes");
      t = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN, HYPERVISOR_SANDBOX_DATA_DIR: dataRoot, HYPERVISOR_SANDBOX_DISK: String(DISK) } });
      // Mallory signs up herself, so her account page can be read; bob is the operator's.
      malloryClient = new PublicClient(t.publicUrl, ORIGIN);
      await malloryClient.register(mallory, new SoftwareAuthenticator(ORIGIN));
      assert.equal((await t.operator.post("/users", { name: bob })).status, 201);
      const added = await t.operator.post<{ generation: { id: number } }>("/generations", { command: [process.execPath, hogScript], version: "resource-hog" });
      assert.equal(added.status, 201, JSON.stringify(added.body));
      for (const user of [mallory, bob]) {
        assert.equal((await t.operator.post("/deploy", { generation: added.body.generation.id, users: [user] })).status, 200);
        await start(user);
      }
    });
    after(async () => {
      for (const user of [mallory, bob]) await t?.operator.send("DELETE", `/users/${user}?purge=true&confirm=true`).catch(() => undefined);
      await t?.close();
      await removeSandboxGroups(`${runId}-quota-`);
      fs?.remove();
    });

    it("a file written past its disk fails at the limit, at once; another sandbox on the same file system still writes", async () => {
      const containment = await t.daemon.services.checks.containment!();
      assert.equal(containment.disk?.method, "btrfs qgroup", "the start-up log says how disks hold");
      assert.match(containment.disk.note, /btrfs quotas were off there, the daemon turned them on/);
      const filled = await attack<{ bytes: number; error?: string }>(mallory, `/diskfill?max=${4 * DISK}`);
      assert.equal(filled.error, "EDQUOT", `wrote ${filled.bytes} bytes of ${4 * DISK} without being refused`);
      assert.ok(filled.bytes <= DISK, `${filled.bytes} bytes written, disk ${DISK}`);
      assert.ok(allocated(data(mallory)) <= DISK + SLACK, `${allocated(data(mallory))} bytes on disk, disk ${DISK}`);
      // What refused it: the kernel's limit on its data dir's qgroup.
      const qgroup = qgroupOf(data(mallory));
      assert.equal(qgroup.limit, String(DISK), "its data dir's qgroup is limited to its disk");
      assert.ok(qgroup.referenced <= DISK, `its qgroup references ${qgroup.referenced} bytes`);
      await answers();
      const other = await attack<{ bytes: number; error?: string }>(bob, `/diskfill?max=${4 * MiB}`);
      assert.deepEqual(other, { bytes: 4 * MiB }, "another sandbox on the same file system writes");
    });

    it("neither a subvolume nor a snapshot of its own gets it space outside its qgroup", async () => {
      const tried = await attack<{ status: number | null; stderr: string }[]>(mallory, "/subvolume");
      for (const attempt of tried) assert.notEqual(attempt.status, 0, attempt.stderr);
      for (const made of ["escape", "escape-snapshot"]) assert.equal(existsSync(join(data(mallory), made)), false, `${made} was not made`);
    });

    it("many files stop at the limit too", async () => {
      rmSync(join(data(mallory), "fill"));
      btrfs("filesystem", "sync", data(mallory));
      const made = await attack<{ files: number; error?: string }>(mallory, `/manyfiles?max=${(4 * DISK) / (16 * 1024)}&size=${16 * 1024}`);
      assert.equal(made.error, "EDQUOT", `made ${made.files} files without being refused`);
      assert.ok(made.files * 16 * 1024 <= DISK, `${made.files} files of 16 KiB, disk ${DISK}`);
      assert.ok(allocated(data(mallory)) <= DISK + SLACK, `${allocated(data(mallory))} bytes on disk, disk ${DISK}`);
      await answers();
    });

    it("the limit follows the slot's data through a restore, which puts another subvolume in its place", async () => {
      rmSync(join(data(mallory), "many"), { recursive: true });
      const before = qgroupOf(data(mallory)).id;
      const snapshot = await t.operator.post<{ snapshot: { id: string } }>(`/users/${mallory}/snapshots`, { slot: "dev" });
      assert.equal(snapshot.status, 201, JSON.stringify(snapshot.body));
      const restored = await t.operator.post(`/users/${mallory}/snapshots/${snapshot.body.snapshot.id}/restore`, { slot: "dev" });
      assert.equal(restored.status, 200, JSON.stringify(restored.body));
      await start(mallory);
      const after = qgroupOf(data(mallory));
      assert.notEqual(after.id, before, "the restored data is another subvolume");
      assert.equal(after.limit, String(DISK), "with its disk's limit");
      const filled = await attack<{ bytes: number; error?: string }>(mallory, `/diskfill?max=${4 * DISK}`);
      assert.equal(filled.error, "EDQUOT", `wrote ${filled.bytes} bytes of ${4 * DISK} without being refused`);
      assert.ok(allocated(data(mallory)) <= DISK + SLACK, `${allocated(data(mallory))} bytes on disk, disk ${DISK}`);
      await answers();
    });

    it("clones count once, as the kernel counts them: the measure does not stop it for bytes it does not hold", async () => {
      rmSync(join(data(mallory), "fill"));
      // As its user's `cp` makes them on btrfs: three clones of 12 MiB, 48 MiB to a walk, 12 MiB held.
      const blob = join(data(mallory), "blob");
      writeFileSync(blob, Buffer.alloc(12 * MiB, 7));
      for (let i = 0; i < 3; i++) execFileSync("cp", ["--reflink=always", blob, `${blob}-${i}`]);
      assert.ok(qgroupOf(data(mallory)).referenced <= 13 * MiB);
      assert.deepEqual(await (t.daemon.services.runtime as ProcessRuntime).checkDisks(), [], "nothing stopped");
      assert.deepEqual(await attack(mallory, "/health"), "ok", "it runs");
      for (const name of ["blob", "blob-0", "blob-1", "blob-2"]) rmSync(join(data(mallory), name));
    });

    it("past its files, which no qgroup counts, the measure stops it: its user sees why on the account page, the operator in the listing", async () => {
      // Empty files: a few MiB of metadata, well inside its qgroup, but more files than its disk allows (one per 4 KiB).
      const made = await attack<{ files: number; error?: string }>(mallory, `/manyfiles?max=${DISK / 4096 + 100}&size=0`);
      assert.deepEqual(made, { files: DISK / 4096 + 100 });
      const stopped = await (t.daemon.services.runtime as ProcessRuntime).checkDisks();
      assert.deepEqual(
        stopped.map((s) => s.user),
        [mallory],
      );
      const listed = await t.operator.get<{ sandboxes: { role: string; state: string; disk?: string; overDisk?: string }[] }>(`/sandboxes?user=${mallory}`);
      const dev = listed.body.sandboxes.find((s) => s.role === "dev")!;
      assert.equal(dev.state, "stopped");
      assert.equal(dev.disk, "btrfs qgroup");
      assert.match(dev.overDisk ?? "", /over its disk .*HYPERVISOR_SANDBOX_DISK/);
      const page = await malloryClient.get("/_hv/account");
      assert.equal(page.status, 200);
      assert.match(page.text, /id="dev-over-disk"[^>]*>Stopped: its data is over its disk\. sandbox \S+ holds \d+ MiB in \d+ files/);
      const refused = await t.operator.post(`/sandboxes/${mallory}/dev/start`);
      assert.equal(refused.status, 409, JSON.stringify(refused.body));
      await answers();
    });

    it("a purged user's data goes with its subvolume and its qgroup, none left stale", async () => {
      const bobData = data(bob);
      assert.equal((await t.operator.send("DELETE", `/users/${bob}?purge=true&confirm=true`)).status, 200);
      assert.equal(existsSync(bobData), false, "its data dir is gone");
      const qgroups = btrfs("qgroup", "show", dataRoot);
      assert.doesNotMatch(qgroups, /<stale>/, qgroups);
    });
  },
);

describe(
  "a process sandbox's data dir from before quotas, on btrfs: a subvolume with its limit at its next start (DESIGN §8b)",
  { skip: process.getuid?.() === 0 ? false : "needs root: loop devices, qgroups" },
  () => {
    let fs: LoopFs;
    let runtime: ProcessRuntime;
    let dataRoot: string;
    const records = tempDir();
    const user = testUser("quota-convert");
    const dir = () => join(dataRoot, `${user}-a`);
    const isSubvolume = (path: string) => statSync(path).ino === 256;
    before(async () => {
      fs = loopFs("btrfs");
      dataRoot = join(fs.mount, "data");
      runtime = new ProcessRuntime({ recordsDir: join(records.path, "records"), dataDir: dataRoot });
      await runtime.prepare();
    });
    after(async () => {
      await runtime?.remove(user, "a", { removeData: true }).catch(() => undefined);
      await removeSandboxGroups(`${runId}-quota-convert`);
      fs?.remove();
      records.remove();
    });

    it("a plain directory becomes a subvolume, its files kept; a half-made copy a crash left is cleared", async () => {
      mkdirSync(dir());
      writeFileSync(join(dir(), "kept"), "written by an earlier release");
      execFileSync("btrfs", ["-q", "subvolume", "create", join(dataRoot, `.${user}-a.subvolume`)]);
      const { command, version } = referenceSandboxCommand();
      await runtime.create({
        user,
        slot: "a",
        generation: { id: 1, version, command },
        env: {},
        limits: { memoryBytes: 128 * MiB, nanoCpus: 1e9, pids: 64, diskBytes: DISK },
      });
      assert.equal(isSubvolume(dir()), false, "create keeps the data it finds");
      await runtime.start(user, "a");
      assert.ok(isSubvolume(dir()), "a subvolume at its start");
      assert.equal(readFileSync(join(dir(), "kept"), "utf8"), "written by an earlier release");
      assert.equal(qgroupOf(dir()).limit, String(DISK));
      for (const left of [".subvolume", ".directory"]) assert.equal(existsSync(join(dataRoot, `.${user}-a${left}`)), false, `no ${left} left`);
      await runtime.stop(user, "a", 5000);
    });

    it("a crash between the conversion's renames: the directory is put back, then converted", async () => {
      // As the crash left it: the data renamed aside, nothing in its place.
      const aside = join(dataRoot, `.${user}-a.directory`);
      mkdirSync(aside);
      writeFileSync(join(aside, "kept"), "renamed aside");
      execFileSync("btrfs", ["-q", "subvolume", "delete", "--commit-after", dir()]);
      await runtime.start(user, "a");
      assert.ok(isSubvolume(dir()));
      assert.equal(readFileSync(join(dir(), "kept"), "utf8"), "renamed aside");
      assert.equal(existsSync(aside), false);
      assert.equal(qgroupOf(dir()).limit, String(DISK));
      await runtime.stop(user, "a", 5000);
    });
  },
);

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { referenceSandboxCommand } from "../../hypervisor/generations/default-generation.js";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { LoadLoop } from "../helpers/load.js";
import { loopFs, type LoopFsKind } from "../helpers/loop-fs.js";
import { testUser } from "../helpers/run-id.js";
import { printTable, summarize, type Summary } from "./stats.js";

const MiB = 1024 * 1024;
const SIZES = [10 * MiB, 256 * MiB, 1024 * MiB];
const SNAPSHOT_RUNS = 3;
const RELEASE_RUNS = 5;
const sandbox = referenceSandboxCommand();

/**
 * An operator call on a connection of its own: a copy of a large slot leaves a kept-alive
 * connection idle past the server's keep-alive timeout, and reusing it would race the close.
 */
const post = (t: TestDaemon, path: string, body: unknown) => t.operator.send("POST", path, JSON.stringify(body), {}, { agent: false });

/** Snapshot and restore of one slot, by file system (so by method), for each size; ext4's full copy is the baseline. */
async function snapshotTimes(): Promise<void> {
  const rows: { name: string; summary: Summary; baseline?: Summary; isBaseline?: boolean }[] = [];
  for (const size of SIZES) {
    const results = new Map<LoopFsKind, { method: string; snapshot: Summary; restore: Summary }>();
    for (const kind of ["ext4", "btrfs", "xfs"] as const) {
      console.log(`snapshot bench: ${size / MiB} MiB on ${kind}`);
      const fs = loopFs(kind, Math.ceil((size * 3.5) / MiB) + 512);
      const state = tempDir();
      let t: TestDaemon | undefined;
      const user = testUser(`bench-snap-${kind}`);
      try {
        t = await bootDaemon({ stateDir: state.path, env: { HYPERVISOR_SANDBOX_DATA_DIR: join(fs.mount, "sandboxes"), HYPERVISOR_SNAPSHOT_KEEP: "1000" } });
        await t.operator.post("/users", { name: user });
        await t.daemon.services.manager.ensure(user, "live");
        await t.daemon.services.manager.stop(user, "live");
        writeFileSync(join(fs.mount, "sandboxes", `${user}-a`, "blob"), Buffer.alloc(size, 5));
        const snaps: number[] = [];
        const restores: number[] = [];
        let method = "";
        for (let i = 0; i < SNAPSHOT_RUNS; i++) {
          const s = await post(t, `/users/${user}/snapshots`, { slot: "a" });
          if (s.status !== 201) throw new Error(JSON.stringify(s.body));
          snaps.push(s.body.snapshot.durationMs);
          method = s.body.snapshot.method;
          const r = await post(t, `/users/${user}/snapshots/${s.body.snapshot.id}/restore`, {});
          if (r.status !== 200) throw new Error(JSON.stringify(r.body));
          restores.push(r.ms);
          // Only the newest copies stay: the loop file system is sized for a few.
          for (const old of t.daemon.services.snapshots.list(user)) await t.daemon.services.snapshots.delete(user, old.id);
        }
        results.set(kind, { method, snapshot: summarize(snaps), restore: summarize(restores) });
      } finally {
        await t?.close();
        fs.remove();
        state.remove();
      }
    }
    const base = results.get("ext4")!;
    for (const [kind, r] of results) {
      const label = `${size / MiB} MiB ${kind} (${r.method})`;
      rows.push({ name: `${label}: snapshot`, summary: r.snapshot, ...(kind === "ext4" ? { isBaseline: true } : { baseline: base.snapshot }) });
      rows.push({ name: `${label}: restore call`, summary: r.restore, ...(kind === "ext4" ? { isBaseline: true } : { baseline: base.restore }) });
    }
  }
  printTable(
    "Snapshot (copy, sandbox stopped) and restore (copy + keep the replaced data + start), by size and method; ext4's full copy is the baseline",
    rows,
  );
}

/** Held-request latency of the samples that began during `op`, and the op's own time. */
async function during(loop: LoadLoop, op: () => Promise<unknown>): Promise<{ held: number[]; total: number; failed: number }> {
  const from = loop.samples.length;
  const began = performance.now();
  await op();
  const total = performance.now() - began;
  await sleep(200);
  const seen = loop.samples.slice(from);
  return { held: seen.map((s) => s.ms), total, failed: seen.filter((s) => s.status !== 200).length };
}

/** Promote and rollback with data under load, beside swap and warm rollback in the same run (process runtime, 10 MiB of data). */
async function releaseTimes(): Promise<void> {
  const t = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: "http://hv.bench", HYPERVISOR_DRAIN_MS: "500", HYPERVISOR_START_TIMEOUT_MS: "10000" } });
  const user = testUser("bench-data-rel");
  try {
    await t.operator.post("/users", { name: user });
    const g1 = (await t.operator.get("/generations")).body.generations[0].id as number;
    const g2 = (
      await t.operator.post("/generations", { command: [...sandbox.command.filter((a) => !a.startsWith("--version=")), "--version=2"], version: "2" })
    ).body.generation.id as number;
    await t.operator.post(`/generations/${g1}/known-good`);
    await t.operator.post(`/generations/${g2}/known-good`);
    const live = await t.daemon.services.manager.ensure(user, "live");
    writeFileSync(join(`${t.stateDir}-sandboxes`, `${user}-${live.slot}`, "blob"), Buffer.alloc(10 * MiB, 3));
    const loop = new LoadLoop(t.publicUrl, "/health", `hv_session=${t.daemon.services.sessions.create(user, "full").token}`).start();
    await sleep(300);
    const ops: Record<string, { held: number[]; totals: number[]; failed: number }> = {};
    const record = async (name: string, op: () => Promise<{ status: number; body: unknown }>) => {
      const r = await during(loop, async () => {
        const res = await op();
        if (res.status !== 200) throw new Error(`${name}: ${JSON.stringify(res.body)}`);
      });
      const o = (ops[name] ??= { held: [], totals: [], failed: 0 });
      o.held.push(...r.held);
      o.totals.push(r.total);
      o.failed += r.failed;
    };
    await t.operator.post("/deploy", { generation: g2, users: [user] });
    for (let i = 0; i < RELEASE_RUNS; i++) await record("swap", () => t.operator.post("/swap", { users: [user] }));
    for (let i = 0; i < RELEASE_RUNS; i++) await record("warm rollback", () => t.operator.post("/rollback", { users: [user] }));
    for (let i = 0; i < RELEASE_RUNS; i++) {
      const now = t.daemon.services.routing.generationOf(user, "live");
      await t.operator.post("/deploy", { generation: now === g1 ? g2 : g1, users: [user] });
      await record("promote", () => t.operator.post("/promote", { users: [user] }));
      await record("rollback with data", () => t.operator.post("/rollback", { users: [user], data: true }));
    }
    await loop.stop();
    const rows: { name: string; summary: Summary; baseline?: Summary; isBaseline?: boolean }[] = [];
    const base = summarize(ops.swap!.held);
    for (const [name, o] of Object.entries(ops)) {
      const held = summarize(o.held);
      rows.push({ name: `${name}: requests during it (${o.failed} failed)`, summary: held, ...(name === "swap" ? { isBaseline: true } : { baseline: base }) });
      rows.push({ name: `${name}: whole call`, summary: summarize(o.totals) });
      console.log(`${name}: held-request p50 ${held.median.toFixed(1)} ms, p99 ${held.p99.toFixed(1)} ms, max ${held.max.toFixed(1)} ms, ${o.failed} failed`);
    }
    printTable("One user under keep-alive load (process runtime, 10 MiB data): request latency during each release; swap is the baseline", rows);
  } finally {
    for (const role of ["live", "dev"] as const) await t.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t.close();
  }
}

/**
 * Many users promoted in one call, their data on a loop btrfs: each user's time and the whole
 * call. A hundred users (DESIGN §2a's fleet), each running two process sandboxes;
 * `HV_BENCH_DATA_USERS` sets another count for a machine that cannot hold that many.
 */
async function fleetPromote(): Promise<void> {
  const count = Number(process.env.HV_BENCH_DATA_USERS ?? "100");
  // Each user's 10 MiB blob, its clones sharing the blocks, and room for btrfs's metadata.
  const fs = loopFs("btrfs", Math.max(2048, 20 * count + 1024));
  const state = tempDir();
  let t: TestDaemon | undefined;
  const users = Array.from({ length: count }, (_, i) => testUser(`bench-fleet-${i}`));
  try {
    t = await bootDaemon({
      stateDir: state.path,
      env: { HYPERVISOR_SANDBOX_DATA_DIR: join(fs.mount, "sandboxes"), HYPERVISOR_START_TIMEOUT_MS: "30000", HYPERVISOR_MAX_SANDBOXES: String(4 * count) },
    });
    for (const user of users) {
      await t.operator.post("/users", { name: user });
      const { slot } = await t.daemon.services.manager.ensure(user, "live");
      writeFileSync(join(fs.mount, "sandboxes", `${user}-${slot}`, "blob"), Buffer.alloc(10 * MiB, 9));
    }
    const g2 = (
      await t.operator.post("/generations", { command: [...sandbox.command.filter((a) => !a.startsWith("--version=")), "--version=2"], version: "2" })
    ).body.generation.id as number;
    await t.operator.post("/deploy", { generation: g2 });
    const began = performance.now();
    const res = await post(t, "/promote", {});
    const total = performance.now() - began;
    if (res.status !== 200) throw new Error(JSON.stringify(res.body));
    const perUser = (res.body.results as { durationMs: number }[]).map((r) => r.durationMs);
    const methods = new Set(t.daemon.services.snapshots.list(users[0]!).map((s) => s.method));
    printTable(`Promote of ${count} users in one call, 10 MiB each on btrfs (snapshot method: ${[...methods].join(", ")}); whole call ${total.toFixed(0)} ms`, [
      { name: "each user's promote", summary: summarize(perUser) },
    ]);
  } finally {
    for (const user of users) for (const role of ["live", "dev"] as const) await t?.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t?.close();
    fs.remove();
    state.remove();
  }
}

export async function dataBench(): Promise<void> {
  await snapshotTimes();
  await releaseTimes();
  await fleetPromote();
}

import Database from "better-sqlite3";
import { execFile } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { Worker } from "node:worker_threads";
import { LABELS } from "../../hypervisor/runtime/container-runtime.js";
import { SANDBOX_UID_BASE, SANDBOX_UID_COUNT } from "../../hypervisor/runtime/process/uids.js";
import { bootDaemon, sandboxDataDir, type TestDaemon } from "../helpers/daemon.js";
import { repoRoot } from "../helpers/paths.js";
import { ensureSandboxImage, podman, podmanInstalled, PodmanService } from "../helpers/podman.js";
import { runId, testUser } from "../helpers/run-id.js";
import { summarize, type Summary } from "./stats.js";

const run = promisify(execFile);
const ORIGIN = "http://hv.bench";
/** The fleet; HV_BENCH_FLEET_USERS makes a smaller one for a quick look. */
const FLEET_USERS = Number(process.env.HV_BENCH_FLEET_USERS ?? 1000);
/** Fleet-wide swap and warm rollback, alternating, this many times each. */
const ROUNDS = 5;
const LOADED_USERS = 20;
const GOAL_FLEET_SWAP_MS = 1000;
const GOAL_USER_SWAP_P99_MS = 10;
/** Starting the fleet: a few bubblewrap starts at a time, so the machine's other work goes on. */
const START_CONCURRENCY = 8;

/** The Podman ramp stops at the first of: a start that fails, memory this low, the time budget, the cap. */
const PODMAN_MIN_AVAILABLE = 0.3;
const PODMAN_BUDGET_MS = Number(process.env.HV_BENCH_PODMAN_BUDGET_S ?? 600) * 1000;
const PODMAN_MAX_USERS = Number(process.env.HV_BENCH_PODMAN_MAX_USERS ?? 400);
const PODMAN_STEP_USERS = 10;
const PODMAN_START_CONCURRENCY = 1;

interface Row {
  name: string;
  /** The whole operation; none for a baseline. */
  totalMs?: number;
  perUser: Summary;
  note?: string;
}

interface ReleaseBody {
  ok: boolean;
  durationMs: number;
  results: { user: string; ok: boolean; durationMs: number; path?: string; error?: { code: string; message: string } }[];
}

/** The tiny C sandbox, compiled for this run outside every directory the daemon guards. */
async function buildTinySandbox(): Promise<{ binary: string; remove(): void }> {
  const dir = mkdtempSync(join(tmpdir(), "hv-bench-tiny-"));
  const binary = join(dir, "tiny-sandbox");
  await run("cc", ["-O2", "-o", binary, join(repoRoot, "test/bench/fixtures/tiny-sandbox.c")]);
  return { binary, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

async function eachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

function release(name: string, res: { status: number; body: ReleaseBody }, expectPath?: string): Row {
  const failed = res.body.results?.filter((r) => !r.ok) ?? [];
  if (res.status !== 200 || failed.length) {
    throw new Error(`${name}: ${failed.length} users failed (status ${res.status}): ${JSON.stringify(failed[0] ?? res.body).slice(0, 400)}`);
  }
  const paths = new Set(res.body.results.map((r) => r.path));
  if (expectPath && (paths.size !== 1 || !paths.has(expectPath))) throw new Error(`${name}: expected every path ${expectPath}, got ${[...paths].join("/")}`);
  return { name, totalMs: res.body.durationMs, perUser: summarize(res.body.results.map((r) => r.durationMs)) };
}

function printRows(title: string, rows: Row[]): void {
  console.log(`\n${title}`);
  console.log(
    `${"".padEnd(34)}${"users".padStart(6)}${"total ms".padStart(10)}${"median ms".padStart(11)}${"p99 ms".padStart(9)}${"max ms".padStart(9)}  note`,
  );
  for (const { name, totalMs, perUser, note } of rows) {
    console.log(
      `${name.padEnd(34)}${String(perUser.n).padStart(6)}${(totalMs === undefined ? "-" : totalMs.toFixed(0)).padStart(10)}${perUser.median.toFixed(1).padStart(11)}` +
        `${perUser.p99.toFixed(1).padStart(9)}${perUser.max.toFixed(1).padStart(9)}  ${note ?? ""}`,
    );
  }
}

/** Sequential keep-alive GETs for each user, from a thread of its own, until stopped. */
function loadFor(t: TestDaemon, users: string[]): { stop(): Promise<{ requests: number; failed: number }> } {
  const cookies = users.map((u) => `hv_session=${t.daemon.services.sessions.create(u, "full").token}`);
  const worker = new Worker(new URL("./fixtures/load-worker.js", import.meta.url), { workerData: { url: t.publicUrl, cookies } });
  return {
    async stop() {
      const counted = new Promise<{ requests: number; failed: number }>((resolve) => worker.once("message", resolve));
      worker.postMessage("stop");
      const result = await counted;
      await worker.terminate();
      return result;
    },
  };
}

/**
 * The floor under every acknowledged flip: one durable commit (WAL, synchronous=FULL, as the
 * daemon's database) in the state dir's file system, measured in the same run. A user's swap
 * cannot be acknowledged faster than its row is on disk.
 */
function commitLatency(dir: string): Summary {
  const db = new Database(join(dir, "commit-baseline.db"));
  try {
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = FULL");
    db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)");
    db.prepare("INSERT INTO t VALUES (1, 0)").run();
    const update = db.prepare("UPDATE t SET v = v + 1 WHERE id = 1");
    const samples: number[] = [];
    for (let i = 0; i < 300; i++) {
      const began = performance.now();
      update.run();
      samples.push(performance.now() - began);
    }
    return summarize(samples);
  } finally {
    db.close();
  }
}

/** Processes whose environment names a data dir below `dataRoot`: this run's sandboxes. */
function sandboxProcesses(dataRoot: string): { pid: number; uid: number; rssKb: number }[] {
  const found: { pid: number; uid: number; rssKb: number }[] = [];
  for (const entry of readdirSync("/proc").filter((e) => /^\d+$/.test(e))) {
    try {
      const status = readFileSync(`/proc/${entry}/status`, "latin1");
      const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
      if (uid < SANDBOX_UID_BASE || uid >= SANDBOX_UID_BASE + SANDBOX_UID_COUNT) continue;
      if (!readFileSync(`/proc/${entry}/environ`, "latin1").includes(`DATA_DIR=${dataRoot}/`)) continue;
      found.push({ pid: Number(entry), uid, rssKb: Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0) });
    } catch {
      // gone meanwhile, or a kernel thread
    }
  }
  return found;
}

/** bubblewrap's own processes (its outer and its init) beside each sandbox, by name. */
function bwrapRssKb(): { count: number; rssKb: number } {
  let count = 0;
  let rssKb = 0;
  for (const entry of readdirSync("/proc").filter((e) => /^\d+$/.test(e))) {
    try {
      const status = readFileSync(`/proc/${entry}/status`, "latin1");
      if (!/^Name:\s+bwrap$/m.test(status)) continue;
      count++;
      rssKb += Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0);
    } catch {
      // gone meanwhile
    }
  }
  return { count, rssKb };
}

function memAvailableFraction(): number {
  const info = readFileSync("/proc/meminfo", "latin1");
  const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(info)?.[1]);
  return kb("MemAvailable") / kb("MemTotal");
}

/**
 * 1,000 users, both slots running on the process runtime (each sandbox the tiny C server under
 * bubblewrap): deploy, then fleet-wide swap and warm rollback, under load on 20 users.
 */
async function processFleet(): Promise<void> {
  const tiny = await buildTinySandbox();
  const t = await bootDaemon({
    env: {
      HYPERVISOR_MAX_SANDBOXES: String(FLEET_USERS * 2 + 10),
      HYPERVISOR_PUBLIC_ORIGIN: ORIGIN,
      HYPERVISOR_DRAIN_MS: "1000",
      HYPERVISOR_IDLE_STOP_MS: "0",
    },
  });
  const dataRoot = sandboxDataDir(t.stateDir);
  const users = Array.from({ length: FLEET_USERS }, (_, i) => testUser(`fleet-${i}`));
  const { manager } = t.daemon.services;
  let load: ReturnType<typeof loadFor> | undefined;
  try {
    const generation = async (version: string) =>
      (await t.operator.post("/generations", { command: [tiny.binary, version], version })).body.generation.id as number;
    const g1 = await generation("f1");
    const g2 = await generation("f2");
    await t.operator.post(`/generations/${g1}/known-good`);
    for (const name of users) {
      const res = await t.operator.post("/users", { name });
      if (res.status !== 201 && res.status !== 200) throw new Error(`POST /users ${name}: ${res.status} ${JSON.stringify(res.body)}`);
    }
    const startBegan = performance.now();
    const starts: number[] = [];
    await eachLimited(users, START_CONCURRENCY, async (u) => {
      const began = performance.now();
      await manager.ensure(u, "live").catch(async (err: Error) => {
        const logs: string[] = [];
        try {
          for await (const line of manager.logs(u, "live", { tail: 5 })) logs.push(line);
        } catch {
          // no log to show: the error alone says it
        }
        throw new Error(`start of ${u} failed after ${starts.length} sandboxes: ${err.message}\n${logs.join("\n")}`);
      });
      starts.push(performance.now() - began);
    });
    const rows: Row[] = [{ name: "start live slots (bubblewrap)", totalMs: performance.now() - startBegan, perUser: summarize(starts) }];
    rows.push({ ...release("deploy to every dev slot", await t.operator.post("/deploy", { generation: g2 })), note: "starts the dev sandboxes" });

    const sandboxes = sandboxProcesses(dataRoot);
    const bwrap = bwrapRssKb();
    if (sandboxes.length !== FLEET_USERS * 2) throw new Error(`expected ${FLEET_USERS * 2} sandbox processes running, found ${sandboxes.length}`);

    const commit = commitLatency(t.stateDir);
    rows.push({ name: "baseline: one durable SQLite commit", perUser: commit, note: "per commit, not per user" });
    load = loadFor(t, users.slice(0, LOADED_USERS));
    await sleep(300);
    // A stalled event loop (a slow disk sync, GC, a starved core) delays every user in flight at once: it explains a p99.
    const loopDelay = monitorEventLoopDelay({ resolution: 5 });
    loopDelay.enable();
    const loadBefore = loadavg()[0]!;
    const swaps: Row[] = [];
    const rollbacks: Row[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      swaps.push(release(`swap, round ${i + 1}`, await t.operator.post("/swap", {})));
      rollbacks.push(release(`warm rollback, round ${i + 1}`, await t.operator.post("/rollback", {}), "warm"));
    }
    loopDelay.disable();
    await sleep(300);
    const { requests, failed } = await load.stop();
    load = undefined;
    rows.push(...swaps, ...rollbacks);

    printRows(`Fleet of ${FLEET_USERS} users, both slots running (process runtime, tiny C sandbox under bubblewrap)`, rows);
    const mb = (kb: number) => (kb / 1024).toFixed(0);
    const rss = sandboxes.reduce((s, p) => s + p.rssKb, 0);
    console.log(
      `sandbox processes: ${sandboxes.length}, ${mb(rss)} MB RSS in all (${(rss / sandboxes.length).toFixed(0)} kB each); ` +
        `bubblewrap beside them: ${bwrap.count} processes, ${mb(bwrap.rssKb)} MB`,
    );
    const worst = (list: Row[]) => Math.max(...list.map((r) => r.totalMs!));
    const worstP99 = (list: Row[]) => Math.max(...list.map((r) => r.perUser.p99));
    const verdict = (ok: boolean) => (ok ? "met" : "MISSED");
    console.log(
      `goal fleet-wide swap ≤ ${GOAL_FLEET_SWAP_MS} ms: slowest of ${ROUNDS} ${worst(swaps)} ms, ${verdict(worst(swaps) <= GOAL_FLEET_SWAP_MS)}; ` +
        `per-user swap p99 ≤ ${GOAL_USER_SWAP_P99_MS} ms: worst ${worstP99(swaps).toFixed(1)} ms, ${verdict(worstP99(swaps) <= GOAL_USER_SWAP_P99_MS)}`,
    );
    console.log(`requests failed under load (${LOADED_USERS} users) during ${ROUNDS * 2} fleet-wide flips: ${failed} of ${requests}`);
    console.log(
      `during the flips: event loop delay p99 ${(loopDelay.percentile(99) / 1e6).toFixed(1)} ms, max ${(loopDelay.max / 1e6).toFixed(1)} ms; ` +
        `load average ${loadBefore.toFixed(1)} → ${loadavg()[0]!.toFixed(1)} on ${cpus().length} cores`,
    );
  } finally {
    await load?.stop();
    await eachLimited(users, START_CONCURRENCY, async (u) => {
      for (const role of ["live", "dev"] as const) await manager.stop(u, role).catch(() => undefined);
    });
    await t.close();
    // Whatever a failure left running: the sandbox's own process ends, and bubblewrap with it.
    for (const p of sandboxProcesses(dataRoot)) process.kill(p.pid, "SIGKILL");
    tiny.remove();
  }
}

/**
 * The largest fleet of the reference image the local Podman holds, both slots per user: users
 * are added ten at a time until a start fails, memory runs low, or the budget is spent; then
 * the fleet swaps once. Everything the run made is removed at the end, whatever happened.
 */
async function podmanFleet(): Promise<void> {
  await ensureSandboxImage();
  const service = new PodmanService();
  await service.start();
  const prefix = `${runId}-pf`;
  const t = await bootDaemon({
    env: {
      HYPERVISOR_RUNTIME: "podman",
      HYPERVISOR_PODMAN_SOCKET: service.socketPath,
      HYPERVISOR_MAX_SANDBOXES: String(PODMAN_MAX_USERS * 2 + 10),
      HYPERVISOR_PUBLIC_ORIGIN: ORIGIN,
      HYPERVISOR_DRAIN_MS: "1000",
      HYPERVISOR_IDLE_STOP_MS: "0",
      HYPERVISOR_SANDBOX_MEMORY: "256m",
    },
  });
  const { manager } = t.daemon.services;
  const held: string[] = [];
  const starts: number[] = [];
  let retries = 0;
  /** Median start of each step's sandboxes, by users held: whether starts slow down as the fleet grows. */
  const trend: string[] = [];
  const began = Date.now();
  const availableBefore = memAvailableFraction();
  let stoppedBy = `the cap of ${PODMAN_MAX_USERS} users (HV_BENCH_PODMAN_MAX_USERS)`;
  try {
    ramp: while (held.length < PODMAN_MAX_USERS) {
      if (Date.now() - began > PODMAN_BUDGET_MS) {
        stoppedBy = `the time budget of ${PODMAN_BUDGET_MS / 1000} s (HV_BENCH_PODMAN_BUDGET_S)`;
        break;
      }
      if (memAvailableFraction() < PODMAN_MIN_AVAILABLE) {
        stoppedBy = `memory: less than ${PODMAN_MIN_AVAILABLE * 100}% available`;
        break;
      }
      const step = Array.from({ length: PODMAN_STEP_USERS }, (_, i) => `${prefix}-${held.length + i}`);
      for (const name of step) await t.operator.post("/users", { name });
      let failure: string | undefined;
      await eachLimited(step, PODMAN_START_CONCURRENCY, async (u) => {
        for (const role of ["live", "dev"] as const) {
          if (failure) return;
          const t0 = performance.now();
          try {
            // One retry after a pause: a Podman API slow for a moment under a busy machine is not yet a full one.
            await manager.ensure(u, role).catch(async () => {
              retries++;
              await sleep(5000);
              return manager.ensure(u, role);
            });
            starts.push(performance.now() - t0);
          } catch (err) {
            failure = `${u}/${role}: ${(err as Error).message}`;
          }
        }
      });
      if (failure) {
        stoppedBy = `a start failed: ${failure.slice(0, 300)}`;
        break ramp;
      }
      held.push(...step);
      trend.push(`${held.length}:${summarize(starts.slice(-step.length * 2)).median.toFixed(0)}`);
    }
    const rampMs = Date.now() - began;
    const running = JSON.parse((await podman("ps", "--filter", `label=${LABELS.user}`, "--format", "json")) || "[]") as { Labels: Record<string, string> }[];
    const ours = running.filter((c) => c.Labels[LABELS.user]?.startsWith(prefix)).length;
    const usedGb = ((availableBefore - memAvailableFraction()) * totalMemKb()) / 1024 / 1024;
    const rows: Row[] = [{ name: "start sandboxes (both slots)", totalMs: rampMs, perUser: summarize(starts.length ? starts : [0]) }];
    // The fleet's figures stand even if its swap fails: that failure is a result too.
    let swapOutcome = "";
    if (held.length) {
      try {
        rows.push(release("swap", await t.operator.post("/swap", { users: held })));
      } catch (err) {
        swapOutcome = `; the fleet-wide swap failed: ${(err as Error).message}`;
      }
    }
    printRows(`Largest Podman fleet on the local Podman (reference image, both slots per user)`, rows);
    console.log(`median start (ms) by users held: ${trend.join(" ")}`);
    console.log(
      `held ${held.length} users (${ours} containers running, counted by podman) in ${(rampMs / 1000).toFixed(0)} s; ` +
        `memory used ${usedGb.toFixed(1)} GB (${held.length ? ((usedGb * 1024) / (held.length * 2)).toFixed(0) : "-"} MB per sandbox); ${retries} starts retried; ` +
        `load average ${loadavg()[0]!.toFixed(1)} on ${cpus().length} cores; stopped by ${stoppedBy}${swapOutcome}`,
    );
  } finally {
    await t.close();
    await removePodmanFleet(prefix);
    await service.dispose();
  }
}

function totalMemKb(): number {
  return Number(/^MemTotal:\s+(\d+)/m.exec(readFileSync("/proc/meminfo", "latin1"))?.[1]);
}

/** Containers, volumes and networks of the fleet, removed in a few podman calls, not one per object. */
async function removePodmanFleet(prefix: string): Promise<void> {
  const names = (kind: string, format: string) =>
    podman(kind, "ls", "--format", format)
      .catch(() => "")
      .then((out) => out.split("\n").filter((n) => n.startsWith(`hv-${prefix}`)));
  const containers = (await podman("ps", "-a", "--filter", `label=${LABELS.managed}=true`, "--format", "{{.Names}}").catch(() => ""))
    .split("\n")
    .filter((n) => n.startsWith(`hv-${prefix}`));
  for (let i = 0; i < containers.length; i += 50) await podman("rm", "-f", "-t", "0", ...containers.slice(i, i + 50)).catch(() => undefined);
  const volumes = await names("volume", "{{.Name}}");
  for (let i = 0; i < volumes.length; i += 50) await podman("volume", "rm", "-f", ...volumes.slice(i, i + 50)).catch(() => undefined);
  const networks = await names("network", "{{.Name}}");
  for (let i = 0; i < networks.length; i += 50) await podman("network", "rm", "-f", ...networks.slice(i, i + 50)).catch(() => undefined);
}

export async function fleetBench(): Promise<void> {
  await processFleet();
  if (podmanInstalled()) await podmanFleet();
  else console.log("\n(podman not installed: the largest Podman fleet is not measured)");
}

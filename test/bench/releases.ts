import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { buildSandboxImage } from "../../sandbox/build-image.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { LoadLoop } from "../helpers/load.js";
import { repoRoot } from "../helpers/paths.js";
import { ensureSandboxImage, podman, podmanInstalled, PodmanService, removeRunArtifacts } from "../helpers/podman.js";
import { runId, testUser } from "../helpers/run-id.js";
import { printTable, summarize } from "./stats.js";

const ORIGIN = "http://hv.bench";
const RUNS = 20;
const FLEET = 200;

function failures(loops: LoadLoop[]): { requests: number; failed: number } {
  const all = loops.flatMap((l) => l.samples);
  return { requests: all.length, failed: all.filter((s) => s.status !== 200).length };
}

function loadFor(t: TestDaemon, users: string[]): LoadLoop[] {
  return users.map((u) => new LoadLoop(t.publicUrl, "/health", `hv_session=${t.daemon.services.sessions.create(u, "full").token}`).start());
}

/** Swap, warm rollback and cold rollback of one user on Podman, under load on that user. */
async function podmanReleases(): Promise<void> {
  const tags = [1, 2, 3].map((i) => `localhost/hv-bench-${runId}:r${i}`);
  await ensureSandboxImage();
  for (const [i, tag] of tags.entries()) await buildSandboxImage({ tag, version: `r${i + 1}`, labels: { "io.hypervisor.test-run": runId } });
  const service = new PodmanService();
  await service.start();
  const t = await bootDaemon({
    env: {
      HYPERVISOR_RUNTIME: "podman",
      HYPERVISOR_PODMAN_SOCKET: service.socketPath,
      HYPERVISOR_SANDBOX_IMAGE: tags[0]!,
      HYPERVISOR_PUBLIC_ORIGIN: ORIGIN,
      HYPERVISOR_DRAIN_MS: "1000",
    },
  });
  try {
    const user = testUser("bench-rel");
    await t.operator.post("/users", { name: user });
    const gens = [(await t.operator.get("/generations")).body.generations[0].id as number];
    for (const tag of tags.slice(1)) gens.push((await t.operator.post("/generations", { image: tag })).body.generation.id);
    await t.operator.post("/deploy", { generation: gens[1], users: [user] });
    // Two known-good generations, one in each slot: every rollback is then a warm flip.
    for (const g of gens.slice(0, 2)) await t.operator.post(`/generations/${g}/known-good`);
    const loops = loadFor(t, [user]);
    await sleep(300);

    const swaps: number[] = [];
    const swapCalls: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const res = await t.operator.post("/swap", { users: [user] });
      swaps.push(res.body.results[0].durationMs);
      swapCalls.push(res.ms);
    }
    const warm: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const res = await t.operator.post("/rollback", { users: [user] });
      if (res.body.results?.[0]?.path !== "warm") throw new Error(`expected a warm rollback: ${JSON.stringify(res.body)}`);
      warm.push(res.ms);
    }
    const cold: number[] = [];
    const { manager, routing, users: directory } = t.daemon.services;
    for (let i = 0; i < RUNS; i++) {
      const live = routing.generationOf(user, "live");
      const [other, target] = gens.filter((g) => g !== live);
      // Dev holds another generation and no sandbox of the target exists: the cold path.
      await directory.withUserLock(user, () => manager.assignGeneration(user, routing.slotOf(user, "dev"), other!));
      const res = await t.operator.post("/rollback", { users: [user], to: target });
      if (res.body.results?.[0]?.path !== "cold") throw new Error(`expected a cold rollback: ${JSON.stringify(res.body)}`);
      cold.push(res.ms);
    }
    for (const l of loops) await l.stop();
    const { requests, failed } = failures(loops);
    printTable("Swap and rollback, one user, podman (call → flip acknowledged)", [
      { name: "swap: server step (health check + flip)", summary: summarize(swaps) },
      { name: "swap: operator call round trip", summary: summarize(swapCalls) },
      { name: "warm rollback: operator call", summary: summarize(warm) },
      { name: "cold rollback: operator call", summary: summarize(cold) },
    ]);
    console.log(
      `p99 (nearest rank of ${RUNS}): swap ${summarize(swapCalls).p99.toFixed(1)} ms, warm ${summarize(warm).p99.toFixed(1)} ms, cold ${summarize(cold).p99.toFixed(1)} ms`,
    );
    console.log(`requests failed under load during these ${RUNS * 3} operations: ${failed} of ${requests}`);
  } finally {
    await t.close();
    await removeRunArtifacts(runId);
    for (const tag of tags) await podman("rmi", "-f", tag).catch(() => undefined);
    await service.dispose();
  }
}

/** 200 users, both slots running, one fleet-wide swap and warm rollback, under load on 20 users. */
async function fleet(): Promise<void> {
  const micro = (version: string) => ({ command: ["python3", join(repoRoot, "test/bench/fixtures/micro-sandbox.py"), version], version });
  const t = await bootDaemon({ env: { HYPERVISOR_MAX_SANDBOXES: String(FLEET * 2 + 10), HYPERVISOR_PUBLIC_ORIGIN: ORIGIN, HYPERVISOR_DRAIN_MS: "1000" } });
  const users = Array.from({ length: FLEET }, (_, i) => testUser(`fleet-${i}`));
  try {
    const g1 = (await t.operator.post("/generations", micro("f1"))).body.generation.id as number;
    const g2 = (await t.operator.post("/generations", micro("f2"))).body.generation.id as number;
    await t.operator.post(`/generations/${g1}/known-good`);
    for (const name of users) await t.operator.post("/users", { name });
    // New users start on the newest known-good generation (g1); deploy g2 to dev everywhere.
    const began = Date.now();
    const deploy = await t.operator.post("/deploy", { generation: g2 });
    const deployMs = Date.now() - began;
    if (!deploy.body.ok) throw new Error(`fleet deploy failed: ${JSON.stringify(deploy.body).slice(0, 500)}`);
    await Promise.all(users.map((u) => t.daemon.services.manager.ensure(u, "live")));
    const loops = loadFor(t, users.slice(0, 20));
    await sleep(300);
    const swap = await t.operator.post("/swap", {});
    const rollback = await t.operator.post("/rollback", {});
    await sleep(300);
    for (const l of loops) await l.stop();
    const { requests, failed } = failures(loops);
    const perUser = (r: { body: { results: { durationMs: number }[] } }) => summarize(r.body.results.map((x) => x.durationMs));
    console.log(`\nFleet of ${FLEET} users, both slots running (process runtime, minimal sandbox)`);
    console.log(`deploy to every dev slot: ${deployMs} ms total (concurrency 4)`);
    for (const [name, r] of [
      ["swap", swap],
      ["warm rollback", rollback],
    ] as const) {
      const s = perUser(r);
      console.log(
        `${name}: ok=${r.body.ok} total ${r.body.durationMs} ms, per user median ${s.median.toFixed(1)} ms p99 ${s.p99.toFixed(1)} ms` +
          (name === "warm rollback" ? `, paths ${[...new Set(r.body.results.map((x: { path: string }) => x.path))].join("/")}` : ""),
      );
    }
    console.log(`requests failed under load (20 users) during the fleet swap and rollback: ${failed} of ${requests}`);
  } finally {
    await Promise.all(users.flatMap((u) => (["live", "dev"] as const).map((r) => t.daemon.services.manager.stop(u, r).catch(() => undefined))));
    await t.close();
  }
}

export async function releaseBench(): Promise<void> {
  if (podmanInstalled()) await podmanReleases();
  else console.log("\n(podman not installed: swap/rollback figures on podman skipped)");
  await fleet();
}

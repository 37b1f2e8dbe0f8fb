import { setTimeout as sleep } from "node:timers/promises";
import { tempDir } from "../helpers/daemon.js";
import { podmanInstalled, withPodmanService } from "../helpers/podman.js";
import { RestartHarness } from "../helpers/restart-harness.js";
import { testUser } from "../helpers/run-id.js";
import { printTable, summarize, type Summary } from "./stats.js";

const RUNS = 15;
/** Frozen soon after each request: the sweep looks every 250 ms. */
const FREEZE_MS = 300;

async function timedGet(harness: RestartHarness, path: string): Promise<number> {
  const began = performance.now();
  const res = await fetch(`${harness.publicUrl}${path}`, { headers: { cookie: harness.cookie } });
  await res.arrayBuffer();
  const ms = performance.now() - began;
  if (res.status !== 200) throw new Error(`GET ${path}: ${res.status}`);
  return ms;
}

async function liveState(harness: RestartHarness): Promise<string> {
  const res = await harness.daemon.operator.get(`/sandboxes?user=${harness.user}`);
  return (res.body.sandboxes as Array<{ role: string; state: string }>).find((s) => s.role === "live")!.state;
}

async function until(harness: RestartHarness, state: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while ((await liveState(harness)) !== state) {
    if (Date.now() > deadline) throw new Error(`the sandbox never became ${state}`);
    await sleep(50);
  }
}

/**
 * First byte (here: whole small response) of a request through the public proxy, for the same
 * sandbox in three states, interleaved in each round so the machine's load weighs on all alike:
 * already running, frozen by idleness (thawed by the request), stopped (a cold start).
 */
async function measure(label: string, env: Record<string, string>): Promise<{ running: Summary; thawed: Summary; cold: Summary }> {
  const state = tempDir();
  const harness = await RestartHarness.start(state.path, testUser(`bench-freeze-${label}`), {
    ...env,
    HYPERVISOR_IDLE_FREEZE_MS: String(FREEZE_MS),
    HYPERVISOR_IDLE_STOP_MS: "0",
  });
  const running: number[] = [];
  const thawed: number[] = [];
  const cold: number[] = [];
  try {
    for (let i = 0; i < RUNS; i++) {
      await until(harness, "frozen");
      thawed.push(await timedGet(harness, "/whoami"));
      running.push(await timedGet(harness, "/whoami"));
      await harness.daemon.operator.post(`/sandboxes/${harness.user}/live/stop`);
      cold.push(await timedGet(harness, "/whoami"));
    }
  } finally {
    await harness.close();
    state.remove();
  }
  return { running: summarize(running), thawed: summarize(thawed), cold: summarize(cold) };
}

function report(title: string, r: { running: Summary; thawed: Summary; cold: Summary }): void {
  printTable(title, [
    { name: "already running", summary: r.running, isBaseline: true },
    { name: "frozen: thaw and serve", summary: r.thawed, baseline: r.running },
    { name: "stopped: cold start and serve", summary: r.cold, baseline: r.running },
  ]);
  console.log(
    `  p99 ms: running ${r.running.p99.toFixed(1)}, thaw ${r.thawed.p99.toFixed(1)} (+${(r.thawed.p99 - r.running.p99).toFixed(1)}), cold ${r.cold.p99.toFixed(1)}`,
  );
}

export async function freezeBench(): Promise<void> {
  report("A request after idle through the proxy, process runtime (reference sandbox)", await measure("process", {}));
  if (!podmanInstalled()) {
    console.log("\n(podman not installed: podman figures skipped)");
    return;
  }
  await withPodmanService(async (service) => {
    report(
      "A request after idle through the proxy, podman runtime (reference image)",
      await measure("podman", { HYPERVISOR_RUNTIME: "podman", HYPERVISOR_PODMAN_SOCKET: service.socketPath }),
    );
  });
}

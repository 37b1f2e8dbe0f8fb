import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { ContainerRuntime } from "../../hypervisor/runtime/container-runtime.js";
import { ProcessRuntime } from "../../hypervisor/runtime/process/process-runtime.js";
import { waitHealthy } from "../../hypervisor/sandboxes/health-check.js";
import { bootDaemon, sandboxDataDir, tempDir } from "../helpers/daemon.js";
import { podman, podmanInstalled, removeContainer, SANDBOX_IMAGE, withPodmanService } from "../helpers/podman.js";
import { runId, testUser } from "../helpers/run-id.js";
import { printTable, summarize } from "./stats.js";

const RUNS = 20;

async function timeIt(fn: () => Promise<unknown>): Promise<number> {
  const began = performance.now();
  await fn();
  return performance.now() - began;
}

interface Variant {
  label: string;
  env: Record<string, string>;
  /** The runtime to run, built for the daemon's state dir; default the one the env selects. */
  runtime?: (stateDir: string) => ContainerRuntime;
}

/**
 * Start → healthy through the sandbox manager, from a stopped sandbox and from none at all.
 * Variants run side by side, one daemon each, their samples interleaved, so a change in the
 * machine's load shows in all of them alike.
 */
async function hypervisorStarts(variants: Variant[]) {
  const runs = [];
  for (const variant of variants) {
    const state = tempDir();
    const t = await bootDaemon({ env: variant.env, stateDir: state.path, runtime: variant.runtime?.(state.path) });
    const user = testUser(`bench-${variant.label}`);
    await t.operator.post("/users", { name: user });
    await t.daemon.services.manager.ensure(user, "live"); // warm the image and the volume once
    runs.push({ state, t, user, fromStopped: [] as number[], fromNothing: [] as number[] });
  }
  for (let i = 0; i < RUNS; i++) {
    for (const run of runs) {
      const { manager, routing, runtime } = run.t.daemon.services;
      await manager.stop(run.user, "live");
      run.fromStopped.push(await timeIt(() => manager.ensure(run.user, "live")));
      await manager.stop(run.user, "live");
      await runtime.remove(run.user, routing.slotOf(run.user, "live"), { removeData: false });
      run.fromNothing.push(await timeIt(() => manager.ensure(run.user, "live")));
    }
  }
  const results = [];
  for (const run of runs) {
    await run.t.daemon.services.manager.stop(run.user, "live");
    await run.t.close();
    run.state.remove();
    results.push({ fromStopped: summarize(run.fromStopped), fromNothing: summarize(run.fromNothing) });
  }
  return results;
}

/** The same image with `podman run` and the same health poll: the floor the hypervisor adds to. */
async function barePodmanRuns() {
  const samples: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const name = `hv-${runId}-bare-${i}`;
    samples.push(
      await timeIt(async () => {
        await podman("run", "-d", "--name", name, "--label", `io.hypervisor.user=${runId}-bare`, "-p", "127.0.0.1::8080", SANDBOX_IMAGE);
        const port = Number((await podman("port", name, "8080/tcp")).trim().split(":").at(-1));
        await waitHealthy({ host: "127.0.0.1", port }, Date.now() + 30_000);
      }),
    );
    await removeContainer(name, "-t", "0");
  }
  return summarize(samples);
}

export async function coldStartBench(): Promise<void> {
  // Uncontained is what a host without bubblewrap runs: the runtime told to find none.
  // Shared network is what contained sandboxes ran with before each had a network namespace of its own (and what a non-root daemon runs).
  const [uncontained, shared, contained] = await hypervisorStarts([
    {
      label: "uncontained",
      env: { HYPERVISOR_PROCESS_UNCONTAINED: "accept" },
      runtime: (stateDir) =>
        new ProcessRuntime({ recordsDir: join(stateDir, "sandboxes"), dataDir: sandboxDataDir(stateDir), bwrap: join(stateDir, "no-bubblewrap") }),
    },
    {
      label: "shared-net",
      env: {},
      runtime: (stateDir) => new ProcessRuntime({ recordsDir: join(stateDir, "sandboxes"), dataDir: sandboxDataDir(stateDir), ownNetwork: false }),
    },
    { label: "contained", env: {} },
  ]);
  printTable(
    "Cold start to healthy, process runtime (reference sandbox): uncontained, contained on the host's network, contained with a network of its own (the default as root)",
    [
      { name: "uncontained: stopped → healthy", summary: uncontained!.fromStopped, isBaseline: true },
      { name: "contained, host network: stopped → healthy", summary: shared!.fromStopped, baseline: uncontained!.fromStopped },
      { name: "contained, own network: stopped → healthy", summary: contained!.fromStopped, baseline: shared!.fromStopped },
      { name: "uncontained: nothing → healthy", summary: uncontained!.fromNothing, isBaseline: true },
      { name: "contained, host network: nothing → healthy", summary: shared!.fromNothing, baseline: uncontained!.fromNothing },
      { name: "contained, own network: nothing → healthy", summary: contained!.fromNothing, baseline: shared!.fromNothing },
    ],
  );
  if (!podmanInstalled()) {
    console.log("\n(podman not installed: podman figures skipped)");
    return;
  }
  await withPodmanService(async (service) => {
    const bare = await barePodmanRuns();
    await sleep(200);
    const [pod] = await hypervisorStarts([{ label: "pod", env: { HYPERVISOR_RUNTIME: "podman", HYPERVISOR_PODMAN_SOCKET: service.socketPath } }]);
    printTable("Cold start to healthy, podman runtime (same image, same run)", [
      { name: "bare `podman run -d` + health poll", summary: bare, isBaseline: true },
      { name: "hypervisor: stopped → healthy", summary: pod!.fromStopped, baseline: bare },
      { name: "hypervisor: nothing → healthy (create+start)", summary: pod!.fromNothing, baseline: bare },
    ]);
  });
}

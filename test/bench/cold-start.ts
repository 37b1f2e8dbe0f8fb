import { setTimeout as sleep } from "node:timers/promises";
import { waitHealthy } from "../../hypervisor/sandboxes/health-check.js";
import { bootDaemon } from "../helpers/daemon.js";
import { ensureSandboxImage, podman, podmanInstalled, PodmanService, removeRunArtifacts, SANDBOX_IMAGE } from "../helpers/podman.js";
import { runId, testUser } from "../helpers/run-id.js";
import { printTable, summarize } from "./stats.js";

const RUNS = 20;

async function timeIt(fn: () => Promise<unknown>): Promise<number> {
  const began = performance.now();
  await fn();
  return performance.now() - began;
}

/** Start → healthy through the sandbox manager, from a stopped sandbox and from none at all. */
async function hypervisorStarts(env: Record<string, string>, label: string) {
  const t = await bootDaemon({ env });
  const { manager, routing, runtime } = t.daemon.services;
  const user = testUser(`bench-${label}`);
  await t.operator.post("/users", { name: user });
  await manager.ensure(user, "live"); // warm the image and the volume once
  const fromStopped: number[] = [];
  const fromNothing: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    await manager.stop(user, "live");
    fromStopped.push(await timeIt(() => manager.ensure(user, "live")));
    await manager.stop(user, "live");
    await runtime.remove(user, routing.slotOf(user, "live"), { removeData: false });
    fromNothing.push(await timeIt(() => manager.ensure(user, "live")));
  }
  await manager.stop(user, "live");
  await t.close();
  return { fromStopped: summarize(fromStopped), fromNothing: summarize(fromNothing) };
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
    await podman("rm", "-f", "-t", "0", name);
  }
  return summarize(samples);
}

export async function coldStartBench(): Promise<void> {
  const process = await hypervisorStarts({}, "proc");
  printTable("Cold start to healthy, process runtime (reference sandbox)", [
    { name: "hypervisor: stopped → healthy", summary: process.fromStopped },
    { name: "hypervisor: nothing → healthy (create+start)", summary: process.fromNothing },
  ]);
  if (!podmanInstalled()) {
    console.log("\n(podman not installed: podman figures skipped)");
    return;
  }
  await ensureSandboxImage();
  const service = new PodmanService();
  await service.start();
  try {
    const bare = await barePodmanRuns();
    await sleep(200);
    const pod = await hypervisorStarts({ HYPERVISOR_RUNTIME: "podman", HYPERVISOR_PODMAN_SOCKET: service.socketPath }, "pod");
    printTable("Cold start to healthy, podman runtime (same image, same run)", [
      { name: "bare `podman run -d` + health poll", summary: bare, isBaseline: true },
      { name: "hypervisor: stopped → healthy", summary: pod.fromStopped, baseline: bare },
      { name: "hypervisor: nothing → healthy (create+start)", summary: pod.fromNothing, baseline: bare },
    ]);
  } finally {
    await removeRunArtifacts(runId);
    await service.dispose();
  }
}

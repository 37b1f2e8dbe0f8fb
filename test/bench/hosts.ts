import { spawnSync } from "node:child_process";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
import { daemonEnv, spawnDaemon, tempDir, type SpawnedDaemon } from "../helpers/daemon.js";
import { ensureSandboxImage, podmanInstalled, PodmanService, removeRunArtifacts } from "../helpers/podman.js";
import { freePort } from "../helpers/ports.js";
import { runId, testUser } from "../helpers/run-id.js";
import { SimHost } from "../helpers/sim-hosts.js";
import { wrk, type WrkResult } from "./proxy.js";

const ORIGIN = "http://hv.bench";

/** A user registered with a passkey while only `host` takes new users, so their sandboxes start there. */
async function userOn(daemon: SpawnedDaemon, publicUrl: string, host: string, others: string[], name: string) {
  await daemon.operator.post(`/hosts/${host}/uncordon`);
  for (const other of others) await daemon.operator.post(`/hosts/${other}/cordon`);
  const client = new PublicClient(publicUrl, ORIGIN);
  const user = testUser(name);
  await client.register(user, new SoftwareAuthenticator(ORIGIN));
  if (!client.cookie) throw new Error(`registration of ${user} failed`);
  const cookie = `hv_session=${client.cookie}`;
  const first = await client.get("/whoami");
  if (first.status !== 200) throw new Error(`${user}'s sandbox did not start on ${host}: ${first.status} ${first.text}`);
  const sandbox = (await daemon.operator.get(`/sandboxes?user=${user}`)).body.sandboxes.find((s: { role: string }) => s.role === "live");
  return { user, cookie, direct: `http://${sandbox.endpoint.host}:${sandbox.endpoint.port}/whoami` };
}

/**
 * The data plane to a sandbox on a remote host (its own Podman in a network namespace, over
 * tcp and a veth) against one on the hypervisor's own host, same daemon, same run, rounds
 * interleaved; the direct figures say how much of a difference is the network, not the proxy.
 */
export async function hostsBench(): Promise<void> {
  if (spawnSync("wrk", ["--version"]).error || !podmanInstalled()) {
    console.log("\n(wrk or podman not installed: hosts figures skipped; ./scripts/install-deps.sh installs them)");
    return;
  }
  await ensureSandboxImage();
  const service = new PodmanService();
  const remote = new SimHost("remote");
  const state = tempDir();
  let daemon: SpawnedDaemon | undefined;
  try {
    await service.start();
    await remote.startNetns(1);
    const port = await freePort();
    const publicUrl = `http://127.0.0.1:${port}`;
    daemon = await spawnDaemon(
      daemonEnv(state.path, {
        HYPERVISOR_RUNTIME: "podman",
        HYPERVISOR_PODMAN_SOCKET: service.socketPath,
        HYPERVISOR_PUBLIC_ORIGIN: ORIGIN,
        HYPERVISOR_LISTEN: `127.0.0.1:${port}`,
      }),
    );
    const added = await daemon.operator.post("/hosts", { name: remote.name, url: remote.url, address: remote.address, capacity: 2 });
    if (added.status !== 201) throw new Error(`the remote host was not registered: ${JSON.stringify(added.body)}`);
    const onRemote = await userOn(daemon, publicUrl, "remote", ["local"], "bench-remote");
    const onLocal = await userOn(daemon, publicUrl, "local", ["remote"], "bench-local");

    const targets = [
      ["hypervisor → local host", `${publicUrl}/whoami`, onLocal.cookie],
      ["hypervisor → remote host", `${publicUrl}/whoami`, onRemote.cookie],
      ["direct to the local sandbox", onLocal.direct, onLocal.cookie],
      ["direct to the remote sandbox", onRemote.direct, onRemote.cookie],
    ] as const;
    const results = targets.map(() => [] as WrkResult[]);
    for (let round = 0; round < 2; round++) {
      for (const [i, [, url, cookie]] of targets.entries()) results[i]!.push(await wrk(url, cookie, 32, 8));
    }
    const best = results.map((rs) => rs.reduce((a, b) => (b.rps > a.rps ? b : a)));
    console.log("\nHTTP proxy to a sandbox on a remote host (netns over tcp) vs the local one (wrk -t1 -c32 -d8s GET /whoami, best of 2 rounds, same run)");
    console.log(`${"".padEnd(32)}${"req/s".padStart(10)}${"p50 ms".padStart(9)}${"p99 ms".padStart(9)}${"errors".padStart(8)}`);
    for (const [i, [name]] of targets.entries()) {
      const r = best[i]!;
      console.log(
        `${name.padEnd(32)}${r.rps.toFixed(0).padStart(10)}${(r.p50 / 1000).toFixed(2).padStart(9)}${(r.p99 / 1000).toFixed(2).padStart(9)}${String(r.errors).padStart(8)}`,
      );
    }
    const [local, far, directLocal, directFar] = best as [WrkResult, WrkResult, WrkResult, WrkResult];
    console.log(
      `remote/local through the hypervisor: throughput ${(far.rps / local.rps).toFixed(2)}, p50 ${(far.p50 / local.p50).toFixed(2)}×, p99 ${(far.p99 / local.p99).toFixed(2)}×`,
    );
    console.log(
      `remote/local direct:                 throughput ${(directFar.rps / directLocal.rps).toFixed(2)}, p50 ${(directFar.p50 / directLocal.p50).toFixed(2)}×`,
    );
  } finally {
    await daemon?.kill("SIGTERM");
    await remote.dispose();
    await removeRunArtifacts(runId);
    await service.dispose();
    state.remove();
  }
}

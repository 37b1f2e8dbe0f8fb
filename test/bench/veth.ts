// The cost of a process sandbox's own network namespace on a request: the same reference sandbox
// server answered over the host's loopback (as before the per-sandbox network) and at its own
// address across a veth pair in a namespace of its own (as now), side by side, rounds interleaved.
// The namespace, its link and its addresses are this run's own and removed afterwards.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { repoRoot } from "../helpers/paths.js";
import { runId } from "../helpers/run-id.js";
import { SandboxNetworks } from "../../hypervisor/runtime/process/netns.js";
import { wrk, type WrkResult } from "./proxy.js";
import { printTable, summarize } from "./stats.js";

const ROUNDS = 3;
/** A /31 of the block the process runtime uses by default, far from its first allocations. */
const HOST_ADDRESS = "10.252.255.254";
const SANDBOX_ADDRESS = "10.252.255.255";
const PORT = 18690;

function ip(...args: string[]): void {
  execFileSync("ip", args, { stdio: "ignore" });
}

async function answering(url: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (
      await fetch(url).then(
        (r) => r.ok,
        () => false,
      )
    )
      return;
    await sleep(50);
  }
  throw new Error(`${url} never answered`);
}

export async function vethBench(): Promise<void> {
  await setupTimes();
  const netns = `hvbv-${runId}`;
  const link = `hvbv${runId.slice(1)}`;
  const children: ChildProcess[] = [];
  try {
    ip("netns", "add", netns);
    ip("link", "add", `${link}h`, "type", "veth", "peer", "name", `${link}s`);
    ip("link", "set", `${link}s`, "netns", netns);
    ip("address", "add", `${HOST_ADDRESS}/31`, "dev", `${link}h`);
    ip("link", "set", `${link}h`, "up");
    ip("-n", netns, "address", "add", `${SANDBOX_ADDRESS}/31`, "dev", `${link}s`);
    ip("-n", netns, "link", "set", `${link}s`, "up");
    ip("-n", netns, "link", "set", "lo", "up");
    const [first, ...rest] = ["ip", "netns", "exec", netns];
    children.push(spawn("taskset", ["-c", "1", process.execPath, `${repoRoot}/dist/sandbox/server.js`], serverOptions("127.0.0.1")));
    children.push(spawn(first!, [...rest, "taskset", "-c", "1", process.execPath, `${repoRoot}/dist/sandbox/server.js`], serverOptions(SANDBOX_ADDRESS)));
    const targets = { loopback: `http://127.0.0.1:${PORT}/whoami`, veth: `http://${SANDBOX_ADDRESS}:${PORT}/whoami` };
    await answering(targets.loopback);
    await answering(targets.veth);
    const runs: Record<keyof typeof targets, { c32: WrkResult[]; c1: WrkResult[] }> = { loopback: { c32: [], c1: [] }, veth: { c32: [], c1: [] } };
    for (let round = 0; round < ROUNDS; round++) {
      for (const name of ["loopback", "veth"] as const) {
        runs[name].c32.push(await wrk(targets[name], "none=1", 32, 5));
        runs[name].c1.push(await wrk(targets[name], "none=1", 1, 3));
      }
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const row = (name: keyof typeof targets) => ({
      rps: median(runs[name].c32.map((r) => r.rps)),
      p50: median(runs[name].c1.map((r) => r.p50)),
      p99: median(runs[name].c1.map((r) => r.p99)),
      errors: runs[name].c32.reduce((n, r) => n + r.errors, 0),
    });
    const lo = row("loopback");
    const veth = row("veth");
    console.log("\nA sandbox's own network: the reference sandbox over loopback vs at its own address across a veth (wrk, medians of 3 rounds)");
    console.log(`${"".padEnd(34)}${"req/s (32 conns)".padStart(18)}${"p50 µs (1 conn)".padStart(17)}${"p99 µs".padStart(9)}${"errors".padStart(8)}`);
    for (const [name, r] of [
      ["host loopback (baseline)", lo],
      ["own namespace, veth", veth],
    ] as const)
      console.log(
        `${name.padEnd(34)}${r.rps.toFixed(0).padStart(18)}${r.p50.toFixed(0).padStart(17)}${r.p99.toFixed(0).padStart(9)}${String(r.errors).padStart(8)}`,
      );
    const hopUs = 1e6 / veth.rps - 1e6 / lo.rps;
    console.log(
      `veth/loopback req/s ${(veth.rps / lo.rps).toFixed(3)}×; the hop adds ${hopUs.toFixed(1)} µs of serving time per request ` +
        `and ${(veth.p50 - lo.p50).toFixed(0)} µs to a lone request's p50 (compare with a proxied request's cost in \`npm run bench -- proxy\`)`,
    );
  } finally {
    for (const child of children) child.kill("SIGKILL");
    try {
      ip("netns", "delete", netns);
    } catch {
      // not made
    }
    try {
      ip("link", "delete", `${link}h`);
    } catch {
      // went with the namespace's end
    }
    execFileSync("rm", ["-rf", `/tmp/hv-bench-veth-${runId}`]);
  }
}

/**
 * What the namespace adds to a process sandbox's cold start: the runtime's own setup of a
 * sandbox's namespace, link, addresses and rules (create), and its removal, timed one after
 * another on a block of this run's own.
 */
async function setupTimes(): Promise<void> {
  const SANDBOXES = 20;
  const networks = new SandboxNetworks("10.252.254.0/24", `/tmp/hv-bench-veth-${runId}-records`);
  const created: number[] = [];
  const removed: number[] = [];
  for (let i = 0; i < SANDBOXES; i++) {
    const began = performance.now();
    const net = await networks.create(`${runId}-bench${i}-a`);
    created.push(performance.now() - began);
    const again = performance.now();
    await networks.remove(net.netns);
    removed.push(performance.now() - again);
  }
  printTable(`A sandbox's own network namespace, set up and removed by the process runtime (${SANDBOXES} one after another)`, [
    { name: "create (namespace, veth, addresses, rules)", summary: summarize(created) },
    { name: "remove", summary: summarize(removed) },
  ]);
  console.log("(compare create with a process sandbox's cold start in `npm run bench -- cold-start`)");
}

function serverOptions(host: string) {
  return { stdio: "ignore" as const, env: { ...process.env, PORT: String(PORT), HOST: host, DATA_DIR: `/tmp/hv-bench-veth-${runId}` } };
}

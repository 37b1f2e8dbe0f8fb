import { spawn } from "node:child_process";
import { once } from "node:events";
import { Worker } from "node:worker_threads";
import { AddressSet } from "../../proxy/addresses.js";
import { AuditLog } from "../../hypervisor/audit/audit-log.js";
import type { Db } from "../../hypervisor/db/database.js";
import { EgressAllowList } from "../../hypervisor/egress/allow-list.js";
import { buildEgressCredentials } from "../../hypervisor/egress/egress-service.js";
import { DEFAULT_LIMITS, EgressGateway } from "../../hypervisor/egress/gateway.js";
import { EgressTokens } from "../../hypervisor/egress/tokens.js";
import { loadConfig } from "../../hypervisor/config.js";
import { createLogger } from "../../hypervisor/logger.js";
import { Metrics } from "../../hypervisor/metrics/metrics.js";
import type { Internet } from "../helpers/internet.js";
import type { FloodResult, LoadOrder, ProbeResult } from "./fixtures/egress-load-worker.js";
import { printTable, summarize } from "./stats.js";

/** Bob's plain HTTP through the gateway: a user's agent fetching pages, a few at a time. */
const PROBES = 1000;
const PROBE_CONCURRENCY = 4;
/** Mallory's sandbox holds as many connections as the gateway lets one sandbox hold. */
const FLOOD_CONNECTIONS = DEFAULT_LIMITS.perSandbox;
const DOWNLOAD_BYTES = 1024 ** 2;
/** Bob's upstream: a server of its own in the internet namespace, so the flood's upstream being busy is not what bob measures. */
const BOB_PORT = 8081;
const WARM_UP_MS = 1000;
/** Rounds of the three, interleaved, so a burst of load elsewhere on the machine hits one round of each. */
const ROUNDS = 3;

const workerUrl = new URL("./fixtures/egress-load-worker.js", import.meta.url);

function probe(order: Omit<LoadOrder, "mode">): Promise<ProbeResult> {
  const worker = new Worker(workerUrl, { workerData: { ...order, mode: "probe" } satisfies LoadOrder });
  return once(worker, "message").then(([result]) => result as ProbeResult);
}

async function during(flood: Omit<LoadOrder, "mode">, measure: () => Promise<ProbeResult>): Promise<{ probe: ProbeResult; flood: FloodResult }> {
  const worker = new Worker(workerUrl, { workerData: { ...flood, mode: "flood" } satisfies LoadOrder });
  await once(worker, "message");
  await new Promise((resolve) => setTimeout(resolve, WARM_UP_MS));
  const result = await measure();
  worker.postMessage("stop");
  const [floodResult] = (await once(worker, "message")) as [FloodResult];
  return { probe: result, flood: floodResult };
}

/**
 * DESIGN §5b: a sandbox flooding the gateway must not slow other users' proxied requests beyond
 * what this shows. Bob's plain HTTP through the gateway's forward proxy (its budget and audit
 * wired as the daemon wires them, the budget high enough never to refuse: the worst case) alone,
 * then while mallory's sandbox floods the gateway from its own address with small GETs, then with
 * 1 MiB downloads (at HYPERVISOR_EGRESS_SANDBOX_RATE's default, and on a gateway without a rate),
 * each on the most connections the gateway lets one sandbox hold; in rounds, after one round of
 * bob alone to warm up. The clients run in threads of their own.
 */
export async function egressFloodBench(internet: Internet, db: Db): Promise<void> {
  const log = createLogger("silent");
  const tokens = new EgressTokens(db);
  const bob = tokens.issue({ user: "bench-bob", slot: "a", generation: 1 });
  tokens.bind("bench-bob", "a", "127.0.0.1");
  const mallory = tokens.issue({ user: "bench-mallory", slot: "a", generation: 1 });
  tokens.bind("bench-mallory", "a", "127.0.0.2");
  const credentials = buildEgressCredentials(
    {
      egressRoutes: { routesFile: undefined, secretsDir: undefined, secretsKeyFile: undefined, credentialsDir: undefined },
      egressProxyBudget: { rpm: 1_000_000, dailyBytes: Number.MAX_SAFE_INTEGER },
    },
    { db, audit: new AuditLog(db), registry: new Metrics({ defaultMetrics: false }).registry, log },
  );
  // Two gateways: as the daemon runs it (HYPERVISOR_EGRESS_SANDBOX_RATE's default), and without a rate.
  const rate = loadConfig({}).egressSandboxRate;
  const gateways = [rate, 0].map((bytesPerSecond) => {
    const gateway = new EgressGateway({
      tokens,
      allow: EgressAllowList.parse(internet.cidr),
      resolve: async () => [],
      own: AddressSet.empty,
      log,
      limits: { bytesPerSecond },
    });
    gateway.setForwardAccounting(credentials.forwardAccounting);
    return gateway;
  });
  const [port, unshapedPort] = [(await gateways[0]!.listen("127.0.0.1", 0)).port, (await gateways[1]!.listen("127.0.0.1", 0)).port];
  const upstream = spawn(
    "nsenter",
    [
      `--net=/run/netns/${internet.netns}`,
      "--",
      process.execPath,
      "-e",
      `require("http").createServer((q, s) => s.end("hello from bob's upstream")).listen(${BOB_PORT}, "0.0.0.0", () => console.log("ready"))`,
    ],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  try {
    await once(upstream.stdout!, "data");
    const bobs =
      (on = port) =>
      () =>
        probe({ port: on, token: bob, from: "127.0.0.1", url: `http://${internet.address}:${BOB_PORT}/`, concurrency: PROBE_CONCURRENCY, requests: PROBES });
    const flood = (path: string, on = port) => ({
      port: on,
      token: mallory,
      from: "127.0.0.2",
      url: `http://${internet.address}${path}`,
      concurrency: FLOOD_CONNECTIONS,
    });
    await bobs()();
    const pooled = { alone: [] as ProbeResult[], small: [] as ProbeResult[], downloads: [] as ProbeResult[], unshaped: [] as ProbeResult[] };
    const floods = { small: [] as FloodResult[], downloads: [] as FloodResult[], unshaped: [] as FloodResult[] };
    for (let round = 0; round < ROUNDS; round++) {
      pooled.alone.push(await bobs()());
      const small = await during(flood("/"), bobs());
      pooled.small.push(small.probe);
      floods.small.push(small.flood);
      const downloads = await during(flood(`/bytes/${DOWNLOAD_BYTES}`), bobs());
      pooled.downloads.push(downloads.probe);
      floods.downloads.push(downloads.flood);
      const unshaped = await during(flood(`/bytes/${DOWNLOAD_BYTES}`, unshapedPort), bobs(unshapedPort));
      pooled.unshaped.push(unshaped.probe);
      floods.unshaped.push(unshaped.flood);
    }
    const pool = (results: ProbeResult[]) => ({
      summary: summarize(results.flatMap((r) => r.latencies)),
      failed: results.reduce((n, r) => n + r.failed, 0),
    });
    const baseline = pool(pooled.alone).summary;
    const rows = [
      { name: "alone", ...pool(pooled.alone) },
      { name: "while one sandbox floods: small GETs", ...pool(pooled.small) },
      { name: `while one sandbox floods: 1 MiB downloads, at its rate (${rate / 1024 ** 2} MiB/s)`, ...pool(pooled.downloads) },
      { name: "while one sandbox floods: 1 MiB downloads, no rate", ...pool(pooled.unshaped) },
    ];
    printTable(
      `egress flood: another user's plain GETs through the gateway (${ROUNDS} rounds of ${PROBES}, ${PROBE_CONCURRENCY} at a time), while one sandbox floods it on ${FLOOD_CONNECTIONS} connections`,
      rows.map((r, i) => ({ name: r.name, summary: r.summary, ...(i === 0 ? { isBaseline: true } : { baseline }) })),
    );
    for (const { name, summary, failed } of rows.slice(1))
      console.log(
        `  ${name}: p50 ${summary.median.toFixed(2)} ms (${(summary.median / baseline.median).toFixed(2)}× alone's ${baseline.median.toFixed(2)} ms), ` +
          `p99 ${summary.p99.toFixed(2)} ms (${(summary.p99 / baseline.p99).toFixed(2)}× alone's ${baseline.p99.toFixed(2)} ms)` +
          (failed ? `; ${failed} failed` : ""),
      );
    for (const [name, results] of [
      ["small GETs", floods.small],
      ["1 MiB downloads at its rate (a second's burst, then the rate: a flood of a few seconds averages above it)", floods.downloads],
      ["1 MiB downloads, no rate", floods.unshaped],
    ] as const) {
      const answered: Record<string, number> = {};
      for (const r of results) for (const [status, n] of Object.entries(r.answered)) answered[status] = (answered[status] ?? 0) + n;
      const seconds = results.reduce((t, r) => t + r.seconds, 0);
      const bytes = results.reduce((t, r) => t + r.bytes, 0);
      const total = Object.values(answered).reduce((a, b) => a + b, 0);
      console.log(
        `  the flood of ${name}: ${(total / seconds).toFixed(0)} answers/s (${Object.entries(answered)
          .map(([status, n]) => `${n}× ${status}`)
          .join(", ")}), ${(bytes / 1024 ** 2 / seconds).toFixed(0)} MiB/s`,
      );
    }
  } finally {
    upstream.kill("SIGKILL");
    await Promise.all(gateways.map((g) => g.close()));
    credentials.audit.flush();
  }
}

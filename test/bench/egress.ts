import { Agent as HttpAgent, request, type Agent } from "node:http";
import { connect, type Socket } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AddressSet } from "../../proxy/addresses.js";
import { openDatabase } from "../../hypervisor/db/database.js";
import { EgressAllowList } from "../../hypervisor/egress/allow-list.js";
import { EgressGateway } from "../../hypervisor/egress/gateway.js";
import { EgressTokens } from "../../hypervisor/egress/tokens.js";
import { createLogger } from "../../hypervisor/logger.js";
import { makeInternet } from "../helpers/internet.js";
import { egressFloodBench } from "./egress-flood.js";
import { egressRoutesBench } from "./egress-routes.js";
import { closedLoop, printTable, summarize } from "./stats.js";

const REQUESTS = 2000;
const CONCURRENCY = 16;
const IDLE_CONNECTIONS = 1000;

function get(options: { host: string; port: number; path: string; headers?: Record<string, string>; agent: Agent }): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = request(options, (res) => {
      res.resume();
      res.once("end", () => (res.statusCode === 200 ? resolve() : reject(new Error(`status ${res.statusCode}`))));
    });
    req.once("error", reject);
    req.end();
  });
}

/**
 * `npm run bench -- egress` (DESIGN §5b): plain HTTP through the egress gateway's forward proxy
 * vs the same requests straight to the upstream, side by side (the test's own "internet"
 * namespace, as root); then the memory the gateway holds for a thousand idle connections; then
 * another user's requests while one sandbox floods the gateway (egress-flood.ts).
 */
export async function egressBench(): Promise<void> {
  if (process.getuid?.() !== 0) {
    console.log("\negress: skipped (needs root: the upstream lives in a network namespace)");
    return;
  }
  const internet = await makeInternet();
  const dir = mkdtempSync(join(tmpdir(), "hv-egress-bench-"));
  const db = openDatabase(join(dir, "hypervisor.db"));
  const tokens = new EgressTokens(db);
  const token = tokens.issue({ user: "bench", slot: "a", generation: 1 });
  tokens.bind("bench", "a", "127.0.0.1");
  const gateway = new EgressGateway({
    tokens,
    allow: EgressAllowList.parse(internet.cidr),
    resolve: async () => [],
    own: AddressSet.empty,
    log: createLogger("silent"),
    limits: { perSandbox: IDLE_CONNECTIONS + CONCURRENCY + 10 },
  });
  const { port } = await gateway.listen("127.0.0.1", 0);
  const held: Socket[] = [];
  try {
    const agent = new HttpAgent({ keepAlive: true, maxSockets: CONCURRENCY });
    const auth = { "proxy-authorization": `Basic ${Buffer.from(`sandbox:${token}`).toString("base64")}` };
    const direct = await closedLoop(REQUESTS, CONCURRENCY, () => get({ host: internet.address, port: 80, path: "/", agent }));
    const proxied = await closedLoop(REQUESTS, CONCURRENCY, () => get({ host: "127.0.0.1", port, path: `http://${internet.address}/`, headers: auth, agent }));
    const baseline = summarize(direct.latencies);
    printTable(`egress: ${REQUESTS} GETs, ${CONCURRENCY} at a time`, [
      { name: "direct to the upstream", summary: baseline, isBaseline: true },
      { name: "through the gateway (absolute-form HTTP)", summary: summarize(proxied.latencies), baseline },
    ]);
    const through = summarize(proxied.latencies);
    console.log(
      `  req/s: direct ${direct.perSecond.toFixed(0)}, through the gateway ${proxied.perSecond.toFixed(0)} (${(proxied.perSecond / direct.perSecond).toFixed(2)}×); ` +
        `added p50 ${(through.median - baseline.median).toFixed(2)} ms, p99 ${(through.p99 - baseline.p99).toFixed(2)} ms`,
    );
    agent.destroy();

    global.gc?.();
    const before = process.memoryUsage();
    for (let i = 0; i < IDLE_CONNECTIONS; i++) {
      held.push(
        await new Promise<Socket>((resolve, reject) => {
          const socket = connect({ host: "127.0.0.1", port });
          socket.once("connect", () => resolve(socket));
          socket.once("error", reject);
        }),
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
    global.gc?.();
    const after = process.memoryUsage();
    console.log(
      `  ${gateway.connectionsOf("127.0.0.1")} idle gateway connections held (client and gateway in one process): ` +
        `RSS +${((after.rss - before.rss) / 1024 ** 2).toFixed(1)} MiB, heap +${((after.heapUsed - before.heapUsed) / 1024 ** 2).toFixed(1)} MiB`,
    );
    for (const socket of held.splice(0)) socket.destroy();
    await egressFloodBench(internet, db);
    await egressRoutesBench(gateway, port, token, db, dir);
  } finally {
    for (const socket of held) socket.destroy();
    await gateway.close();
    db.close();
    rmSync(dir, { recursive: true, force: true });
    internet.remove();
  }
}

import { mkdirSync, writeFileSync } from "node:fs";
import { Agent as HttpAgent, request } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { join } from "node:path";
import { AuditLog } from "../../hypervisor/audit/audit-log.js";
import type { Db } from "../../hypervisor/db/database.js";
import { Budgets } from "../../hypervisor/egress/budgets.js";
import { EgressAudit } from "../../hypervisor/egress/egress-audit.js";
import type { EgressGateway } from "../../hypervisor/egress/gateway.js";
import { createRouteHandler } from "../../hypervisor/egress/route-handler.js";
import { EgressRoutes } from "../../hypervisor/egress/secrets.js";
import { createLogger } from "../../hypervisor/logger.js";
import { Metrics } from "../../hypervisor/metrics/metrics.js";
import { makeTestCa, startUpstream } from "../helpers/tls-upstreams.js";
import { closedLoop, printTable, summarize } from "./stats.js";

const REQUESTS = 2000;
const CONCURRENCY = 16;
const STREAMS = 20;
const SSE_TOKENS = 10;
const SSE_EVERY_MS = 50;

/** One GET, resolved on its 200 and rejected on anything else. */
function ok(send: (done: (status: number) => void, fail: (e: Error) => void) => void): Promise<void> {
  return new Promise((resolve, reject) => send((status) => (status === 200 ? resolve() : reject(new Error(`status ${status}`))), reject));
}

/**
 * A credential route against the same HTTPS upstream called directly (TLS both ways, the test
 * CA): req/s and added latency; then server-sent events, each token stamped by the upstream when
 * it writes it, so the time each one takes to arrive is measured, the first one included.
 */
export async function egressRoutesBench(gateway: EgressGateway, port: number, token: string, db: Db, dir: string): Promise<void> {
  const ca = makeTestCa();
  const upstream = await startUpstream(ca, (req, res) => {
    if (req.url === "/sse") {
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      let sent = 0;
      const send = () => res.write(`data: ${performance.now()}\n\n`);
      send();
      const timer = setInterval(() => {
        send();
        if (++sent === SSE_TOKENS - 1) {
          clearInterval(timer);
          res.end();
        }
      }, SSE_EVERY_MS);
      res.on("close", () => clearInterval(timer));
      return;
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end('{"ok":true}');
  });
  const secrets = join(dir, "route-secrets");
  mkdirSync(secrets, { mode: 0o700 });
  writeFileSync(join(secrets, "egress-bench"), "bench-key\n");
  const routesFile = join(dir, "routes.json");
  writeFileSync(
    routesFile,
    JSON.stringify([{ name: "bench", upstream: upstream.url, header: "authorization", value: "Bearer {secret}", secret: "bench", concurrent: 1000 }]),
  );
  const routes = new EgressRoutes({ routesFile, secretsDir: secrets, credentialsDir: undefined });
  routes.reload();
  const tlsAgent = new HttpsAgent({ keepAlive: true, maxSockets: CONCURRENCY, ca: ca.ca });
  gateway.setRouteHandler(
    createRouteHandler({
      routes,
      budgets: new Budgets(),
      audit: new EgressAudit(new AuditLog(db), db, new Metrics({ defaultMetrics: false }).registry),
      log: createLogger("silent"),
      tls: { ca: ca.ca, agent: tlsAgent },
    }),
  );
  const agent = new HttpAgent({ keepAlive: true, maxSockets: CONCURRENCY });
  const directAgent = new HttpsAgent({ keepAlive: true, maxSockets: CONCURRENCY, ca: ca.ca });
  const up = new URL(upstream.url);
  const direct = (path: string) =>
    ok((done, fail) =>
      httpsRequest({ host: up.hostname, port: up.port, path, agent: directAgent, ca: ca.ca }, (res) => {
        res.resume();
        res.once("end", () => done(res.statusCode ?? 0));
      })
        .once("error", fail)
        .end(),
    );
  const routed = (path: string) =>
    ok((done, fail) =>
      request({ host: "127.0.0.1", port, path: `/bench${path}`, headers: { authorization: `Bearer ${token}` }, agent }, (res) => {
        res.resume();
        res.once("end", () => done(res.statusCode ?? 0));
      })
        .once("error", fail)
        .end(),
    );
  try {
    const d = await closedLoop(REQUESTS, CONCURRENCY, () => direct("/v1"));
    const r = await closedLoop(REQUESTS, CONCURRENCY, () => routed("/v1"));
    const baseline = summarize(d.latencies);
    const through = summarize(r.latencies);
    printTable(`egress route: ${REQUESTS} HTTPS GETs, ${CONCURRENCY} at a time`, [
      { name: "direct to the upstream (TLS)", summary: baseline, isBaseline: true },
      { name: "through a route (key injected, TLS)", summary: through, baseline },
    ]);
    console.log(
      `  req/s: direct ${d.perSecond.toFixed(0)}, through the route ${r.perSecond.toFixed(0)} (${(r.perSecond / d.perSecond).toFixed(2)}×); ` +
        `added p50 ${(through.median - baseline.median).toFixed(2)} ms, p99 ${(through.p99 - baseline.p99).toFixed(2)} ms`,
    );

    // Each token's delay from the upstream's write to its arrival; the first one is time to first token.
    const stream = (open: (onLine: (line: string) => void, end: () => void) => void) =>
      new Promise<{ first: number; rest: number[] }>((resolve) => {
        const delays: number[] = [];
        open(
          (line) => {
            if (line.startsWith("data: ")) delays.push(performance.now() - Number(line.slice(6)));
          },
          () => resolve({ first: delays[0]!, rest: delays.slice(1) }),
        );
      });
    const lines = (res: import("node:http").IncomingMessage, onLine: (l: string) => void, end: () => void) => {
      let buffered = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        buffered += c;
        let i: number;
        while ((i = buffered.indexOf("\n")) >= 0) {
          onLine(buffered.slice(0, i));
          buffered = buffered.slice(i + 1);
        }
      });
      res.once("end", end);
    };
    const sse = { direct: { first: [] as number[], rest: [] as number[] }, route: { first: [] as number[], rest: [] as number[] } };
    for (let i = 0; i < STREAMS; i++) {
      const a = await stream((onLine, end) =>
        httpsRequest({ host: up.hostname, port: up.port, path: "/sse", agent: directAgent, ca: ca.ca }, (res) => lines(res, onLine, end)).end(),
      );
      const b = await stream((onLine, end) =>
        request({ host: "127.0.0.1", port, path: "/bench/sse", headers: { authorization: `Bearer ${token}` }, agent }, (res) => lines(res, onLine, end)).end(),
      );
      sse.direct.first.push(a.first);
      sse.direct.rest.push(...a.rest);
      sse.route.first.push(b.first);
      sse.route.rest.push(...b.rest);
    }
    const firstDirect = summarize(sse.direct.first);
    const restDirect = summarize(sse.direct.rest);
    printTable(`server-sent events: ${STREAMS} streams of ${SSE_TOKENS} tokens, each from the upstream's write to its arrival`, [
      { name: "first token, direct", summary: firstDirect, isBaseline: true },
      { name: "first token, through the route", summary: summarize(sse.route.first), baseline: firstDirect },
      { name: "later tokens, direct", summary: restDirect, isBaseline: true },
      { name: "later tokens, through the route", summary: summarize(sse.route.rest), baseline: restDirect },
    ]);
    console.log(
      `  time to first token added by the route: p50 ${(summarize(sse.route.first).median - firstDirect.median).toFixed(2)} ms, ` +
        `p95 ${(summarize(sse.route.first).p95 - firstDirect.p95).toFixed(2)} ms`,
    );
  } finally {
    gateway.setRouteHandler(undefined);
    agent.destroy();
    directAgent.destroy();
    tlsAgent.destroy();
    await upstream.close();
    ca.remove();
  }
}

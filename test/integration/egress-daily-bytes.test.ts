import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request, type IncomingHttpHeaders, type ServerResponse } from "node:http";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AddressSet } from "../../proxy/addresses.js";
import { AuditLog } from "../../hypervisor/audit/audit-log.js";
import { openDatabase, type Db } from "../../hypervisor/db/database.js";
import { EgressAllowList } from "../../hypervisor/egress/allow-list.js";
import { Budgets } from "../../hypervisor/egress/budgets.js";
import { EgressAudit } from "../../hypervisor/egress/egress-audit.js";
import { buildEgressCredentials, type EgressCredentials } from "../../hypervisor/egress/egress-service.js";
import { EgressGateway } from "../../hypervisor/egress/gateway.js";
import { createRouteHandler } from "../../hypervisor/egress/route-handler.js";
import { EgressRoutes } from "../../hypervisor/egress/secrets.js";
import { EgressTokens } from "../../hypervisor/egress/tokens.js";
import { createLogger } from "../../hypervisor/logger.js";
import { Metrics } from "../../hypervisor/metrics/metrics.js";
import { makeInternet, type Internet } from "../helpers/internet.js";
import { makeTestCa, startUpstream, type TestCa, type Upstream } from "../helpers/tls-upstreams.js";

/** The forward proxy's budget a day, and each route's: the smallest HYPERVISOR_EGRESS_PROXY_DAILY_BYTES allows. */
const BUDGET = 1024 ** 2;
/** Each download is this big: 16 budgets, so one that is not cut is unmistakable. */
const DOWNLOAD = 16 * BUDGET;
/**
 * How far past the budget a call may run: one read. The gateway counts each chunk as it passes
 * and cuts the call at the first one that spends the day, so at most that chunk goes past it; a
 * chunk is one read from a socket, which Node makes 64 KiB at most (a TLS record, on a route's
 * upstream, is 16 KiB at most). What the sandbox sent counts too, which only lowers the download.
 */
const ONE_READ = 64 * 1024;

interface Received {
  status: number;
  headers: IncomingHttpHeaders;
  /** Body bytes received until the connection ended. */
  bytes: number;
  /** The body's first bytes (enough for a JSON error). */
  head: string;
  /** Whether the whole body arrived (false: cut). */
  complete: boolean;
}

/** One HTTP request on a connection of its own; counts what came back until the connection ends, also when it is cut. */
function fetchCounting(port: number, path: string, headers: Record<string, string>, body?: Buffer): Promise<Received> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, method: body ? "POST" : "GET", headers, agent: false, timeout: 60_000 }, (res) => {
      let bytes = 0;
      let head = "";
      res.on("data", (chunk: Buffer) => {
        bytes += chunk.length;
        if (head.length < 4096) head += chunk.toString("latin1", 0, 4096);
      });
      res.on("error", () => undefined);
      res.on("close", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, bytes, head, complete: res.complete }));
    });
    req.on("timeout", () => req.destroy(new Error("no answer in 60 s")));
    // The request may still be writing its body when the answer (a 429) comes and the connection closes.
    req.on("error", (err: NodeJS.ErrnoException) => (err.code === "ECONNRESET" || err.code === "EPIPE" ? undefined : reject(err)));
    req.end(body);
  });
}

/** A CONNECT and then `payload` through the tunnel; everything that came back until the connection closed. */
function tunnel(port: number, target: string, auth: string, payload: string): Promise<{ answer: string; tunnelled: number }> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    const chunks: Buffer[] = [];
    let established = false;
    socket.setTimeout(60_000, () => socket.destroy(new Error("no end in 60 s")));
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      if (!established && Buffer.concat(chunks).includes("\r\n\r\n")) {
        established = true;
        if (Buffer.concat(chunks).toString("latin1").startsWith("HTTP/1.1 200 ")) socket.write(payload);
      }
    });
    // Cut by the gateway is an ending like any other: what arrived until then is the answer.
    socket.on("error", () => undefined);
    socket.on("close", () => {
      const all = Buffer.concat(chunks);
      const end = all.indexOf("\r\n\r\n") + 4;
      resolve({ answer: all.subarray(0, end).toString("latin1"), tunnelled: all.length - end });
    });
    socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\nProxy-Authorization: ${auth}\r\n\r\n`);
  });
}

// DESIGN §5b: the daily byte budget holds during a call, not only when it is admitted. A download
// far bigger than the budget, through a CONNECT tunnel, as absolute-form HTTP, and through a
// credential route, is cut near the budget and audited as such; the next call is a 429 with
// Retry-After. Real sockets: the forward proxy's upstream is the test's own "internet"
// namespace, the route's a TLS server on loopback.
describe("the daily byte budget binds a call while it runs", () => {
  const dir = mkdtempSync(join(tmpdir(), "hv-daily-bytes-"));
  let internet: Internet;
  let ca: TestCa;
  let db: Db;
  let gateway: EgressGateway;
  let credentials: EgressCredentials;
  let routeAudit: EgressAudit;
  let port: number;
  const upstreams: Upstream[] = [];
  const proxyAuth: Record<string, string> = {};
  const routeToken: Record<string, string> = {};

  before(async () => {
    internet = await makeInternet();
    ca = makeTestCa();
    db = openDatabase(join(dir, "hypervisor.db"));
    const log = createLogger("silent");
    const tokens = new EgressTokens(db);
    for (const user of ["tunnel", "plain", "stream", "upload"]) {
      const token = tokens.issue({ user, slot: "a", generation: 1 });
      tokens.bind(user, "a", "127.0.0.1");
      proxyAuth[user] = `Basic ${Buffer.from(`sandbox:${token}`).toString("base64")}`;
      routeToken[user] = token;
    }
    credentials = buildEgressCredentials(
      {
        egressRoutes: { routesFile: undefined, secretsDir: undefined, secretsKeyFile: undefined, credentialsDir: undefined },
        egressProxyBudget: { rpm: 1000, dailyBytes: BUDGET },
      },
      { db, audit: new AuditLog(db), registry: new Metrics({ defaultMetrics: false }).registry, log },
    );
    const download = await startUpstream(ca, (_req, res) => sendBytes(res, DOWNLOAD));
    // Reads the whole upload before it answers: a budget spent by the upload is spent before any answer.
    const sink = await startUpstream(ca, (req, res) => {
      req.resume();
      req.on("end", () => res.end("stored"));
    });
    upstreams.push(download, sink);
    const secrets = join(dir, "secrets");
    mkdirSync(secrets, { mode: 0o700 });
    writeFileSync(join(secrets, "egress-provider"), "sk-operator-daily-bytes-test\n");
    const route = (name: string, upstream: Upstream) => ({
      name,
      upstream: upstream.url,
      header: "authorization",
      value: "Bearer {secret}",
      secret: "provider",
      dailyBytes: BUDGET,
    });
    writeFileSync(join(dir, "routes.json"), JSON.stringify([route("download", download), route("sink", sink)]));
    const routes = new EgressRoutes({ routesFile: join(dir, "routes.json"), secretsDir: secrets, credentialsDir: undefined });
    assert.deepEqual(routes.reload(), { ok: true, routes: 2, missingSecrets: [] });
    routeAudit = new EgressAudit(new AuditLog(db), db, new Metrics({ defaultMetrics: false }).registry);
    gateway = new EgressGateway({ tokens, allow: EgressAllowList.parse(internet.cidr), resolve: async () => [], own: AddressSet.empty, log });
    gateway.setForwardAccounting(credentials.forwardAccounting);
    gateway.setRouteHandler(createRouteHandler({ routes, budgets: new Budgets(), audit: routeAudit, log, tls: { ca: ca.ca } }));
    port = (await gateway.listen("127.0.0.1", 0)).port;
  });

  after(async () => {
    await gateway?.close();
    await Promise.all(upstreams.map((u) => u.close()));
    db?.close();
    ca?.remove();
    internet?.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  const rowsOf = (audit: EgressAudit, user: string) => audit.log({ user, tail: 10 }).reverse();

  it("closes a CONNECT tunnel once the user's day is spent, then refuses the next with 429", async () => {
    const get = `GET /bytes/${DOWNLOAD} HTTP/1.1\r\nHost: ${internet.address}\r\nConnection: close\r\n\r\n`;
    const cut = await tunnel(port, `${internet.address}:80`, proxyAuth.tunnel!, get);
    assert.match(cut.answer, /^HTTP\/1\.1 200 /);
    assert.ok(cut.tunnelled >= BUDGET - ONE_READ, `ran until near the budget: ${cut.tunnelled} bytes`);
    assert.ok(cut.tunnelled <= BUDGET + ONE_READ, `cut within one read of the budget: ${cut.tunnelled} bytes of ${DOWNLOAD}`);

    const next = await tunnel(port, `${internet.address}:80`, proxyAuth.tunnel!, get);
    assert.match(next.answer, /^HTTP\/1\.1 429 Too Many Requests\r\n/);
    assert.match(next.answer, /\r\nRetry-After: \d+\r\n/);
    assert.equal(next.tunnelled > 0, true, "a JSON error follows");

    const [call, refusal] = rowsOf(credentials.audit, "tunnel");
    assert.deepEqual([call?.decision, call?.status, call?.reason], ["allowed", 200, "budget: daily_bytes"]);
    assert.deepEqual([refusal?.decision, refusal?.status, refusal?.reason], ["refused", 429, "budget: daily_bytes"]);
  });

  it("cuts an absolute-form HTTP download once the day is spent, then answers the next with 429 and a JSON error", async () => {
    const url = `http://${internet.address}/bytes/${DOWNLOAD}`;
    const cut = await fetchCounting(port, url, { "proxy-authorization": proxyAuth.plain! });
    assert.equal(cut.status, 200);
    assert.equal(cut.complete, false, "the download was cut");
    assert.ok(cut.bytes <= BUDGET + ONE_READ, `cut within one read of the budget: ${cut.bytes} bytes of ${DOWNLOAD}`);

    const next = await fetchCounting(port, url, { "proxy-authorization": proxyAuth.plain! });
    assert.equal(next.status, 429);
    assert.match(String(next.headers["retry-after"]), /^\d+$/);
    const error = (JSON.parse(next.head) as { error: { code: string; message: string } }).error;
    assert.equal(error.code, "rate_limited");
    assert.match(error.message, /daily budget of 1048576 bytes/);

    const [call, refusal] = rowsOf(credentials.audit, "plain");
    assert.deepEqual([call?.decision, call?.status, call?.reason], ["allowed", 200, "budget: daily_bytes"]);
    assert.deepEqual([refusal?.decision, refusal?.status, refusal?.reason], ["refused", 429, "budget: daily_bytes"]);
  });

  it("cuts a route's streaming answer once the day is spent, then answers the next with 429 and a JSON error", async () => {
    const headers = { authorization: `Bearer ${routeToken.stream!}` };
    const cut = await fetchCounting(port, "/download/v1/file", headers);
    assert.equal(cut.status, 200);
    assert.equal(cut.complete, false, "the answer was cut");
    assert.ok(cut.bytes <= BUDGET + ONE_READ, `cut within one read of the budget: ${cut.bytes} bytes of ${DOWNLOAD}`);

    const next = await fetchCounting(port, "/download/v1/file", headers);
    assert.equal(next.status, 429);
    assert.match(String(next.headers["retry-after"]), /^\d+$/);
    const error = (JSON.parse(next.head) as { error: { code: string; requestId: string } }).error;
    assert.equal(error.code, "rate_limited");
    assert.ok(error.requestId);

    const [call, refusal] = rowsOf(routeAudit, "stream");
    assert.deepEqual([call?.decision, call?.status, call?.reason], ["allowed", 200, "budget: daily_bytes"]);
    assert.deepEqual([refusal?.decision, refusal?.status, refusal?.reason], ["refused", 429, "budget: daily_bytes"]);
  });

  it("answers a route call whose upload spends the day before any answer with 429, Retry-After and a JSON error", async () => {
    const sent = await fetchCounting(port, "/sink/v1/upload", { authorization: `Bearer ${routeToken.upload!}` }, Buffer.alloc(4 * BUDGET, "u"));
    assert.equal(sent.status, 429);
    assert.match(String(sent.headers["retry-after"]), /^\d+$/);
    assert.equal((JSON.parse(sent.head) as { error: { code: string } }).error.code, "rate_limited");
    const [row] = rowsOf(routeAudit, "upload");
    assert.deepEqual([row?.decision, row?.status, row?.reason], ["refused", 429, "budget: daily_bytes"]);
    assert.ok((row?.bytesIn ?? 0) <= BUDGET + ONE_READ, `the upload was stopped near the budget: ${row?.bytesIn} bytes`);
  });
});

/** A download of `n` bytes, written as fast as the reader takes them. */
function sendBytes(res: ServerResponse, n: number): void {
  res.writeHead(200, { "content-type": "application/octet-stream", "content-length": n });
  const chunk = Buffer.alloc(64 * 1024, "y");
  let left = n;
  const more = () => {
    while (left > 0 && !res.destroyed) {
      left -= chunk.length;
      if (left <= 0) return void res.end(chunk.subarray(0, chunk.length + left));
      if (!res.write(chunk)) return void res.once("drain", more);
    }
  };
  more();
}

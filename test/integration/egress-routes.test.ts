import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, request, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EventEmitter, once } from "node:events";
import { after, before, describe, it } from "node:test";
import pino from "pino";
import { AuditLog } from "../../hypervisor/audit/audit-log.js";
import { openDatabase, type Db } from "../../hypervisor/db/database.js";
import { Budgets } from "../../hypervisor/egress/budgets.js";
import { EgressAudit, type EgressCaller } from "../../hypervisor/egress/egress-audit.js";
import { createRouteHandler } from "../../hypervisor/egress/route-handler.js";
import { EgressRoutes } from "../../hypervisor/egress/secrets.js";
import { readSecretsKey, UserKeys } from "../../hypervisor/egress/user-keys.js";
import { Metrics } from "../../hypervisor/metrics/metrics.js";
import { repoRoot } from "../helpers/paths.js";
import { echoHandler, makeTestCa, startUpstream, type TestCa, type Upstream } from "../helpers/tls-upstreams.js";

const OPERATOR_KEY = "sk-operator-7f3a9c1e5b2d4f6a8c0e2b4d6f8a1c3e";
const USER_KEY = "sk-user-own-91b7d5f3a1c9e7b5d3f1a9c7e5b3d1f9";
const alice: EgressCaller = { user: "alice", slot: "a", generation: 3 };
const bob: EgressCaller = { user: "bob", slot: "b", generation: 4 };

interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** A stand-in for the gateway: a plain HTTP listener that hands every request to the route handler as one caller. */
async function gatewayFor(handler: ReturnType<typeof createRouteHandler>, caller: EgressCaller): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => handler(req, res, caller));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, port: (server.address() as AddressInfo).port };
}

function call(port: number, path: string, opts: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, method: opts.method ?? "GET", headers: opts.headers ?? {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(opts.body);
  });
}

describe("egress routes: injected credentials over real TLS", () => {
  let ca: TestCa;
  let dir: string;
  let db: Db;
  let metrics: Metrics;
  let logFile: string;
  let now = Date.UTC(2026, 0, 1, 12, 0, 0);
  const upstreams: Record<string, Upstream> = {};
  const servers: Server[] = [];
  let alicePort: number;
  let bobPort: number;
  let routes: EgressRoutes;
  /** What the split-echo upstream last received, to compare with what the caller got. */
  let lastSplitAuth = "";
  const SSE_TOKENS = 20;
  const silentCalls = new EventEmitter();
  let sseSent = 0;

  before(async () => {
    ca = makeTestCa();
    dir = mkdtempSync(join(tmpdir(), "hv-egress-routes-"));
    upstreams.echo = await startUpstream(ca, echoHandler);
    // Echoes the credential back one byte at a time: every chunk boundary falls inside the key.
    upstreams.split = await startUpstream(ca, (req, res) => {
      lastSplitAuth = String(req.headers.authorization ?? "");
      res.writeHead(200, { "content-type": "text/plain" });
      const text = `you sent: ${lastSplitAuth} and again ${lastSplitAuth}.`;
      let i = 0;
      const next = () => {
        if (i >= text.length) return res.end();
        res.write(text[i++]!, () => setImmediate(next));
      };
      next();
    });
    upstreams.redirect = await startUpstream(ca, (_req, res) => {
      res.writeHead(302, { location: "http://169.254.77.77/latest/meta-data/" });
      res.end();
    });
    upstreams.gzip = await startUpstream(ca, (_req, res) => {
      res.writeHead(200, { "content-encoding": "gzip" });
      res.end("not really gzip");
    });
    upstreams.silent = await startUpstream(ca, () => silentCalls.emit("request"));
    // A token every 50 ms, as a model provider streams; the count sent so far is what the test compares with.
    upstreams.sse = await startUpstream(ca, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      sseSent = 0;
      const timer = setInterval(() => {
        sseSent += 1;
        res.write(`data: token-${sseSent}\n\n`);
        if (sseSent === SSE_TOKENS) {
          clearInterval(timer);
          res.end();
        }
      }, 50);
      res.on("close", () => clearInterval(timer));
    });
    const secrets = join(dir, "secrets");
    await import("node:fs").then((fs) => fs.mkdirSync(secrets, { mode: 0o700 }));
    writeFileSync(join(secrets, "egress-provider"), `${OPERATOR_KEY}\n`);
    writeFileSync(join(secrets, "secrets-key"), "0123456789abcdef0123456789abcdef0123456789abcdef");
    const routesFile = join(dir, "routes.json");
    const route = (name: string, extra: Record<string, unknown> = {}) => ({
      name,
      upstream: upstreams[name === "budget" ? "echo" : name]!.url,
      header: "authorization",
      value: "Bearer {secret}",
      secret: "provider",
      userKeys: true,
      ...extra,
    });
    writeFileSync(
      routesFile,
      JSON.stringify([
        route("echo"),
        route("split"),
        route("redirect"),
        route("gzip"),
        route("silent", { responseTimeoutMs: 300 }),
        route("budget", { rpm: 2, userKeys: false }),
        { ...route("silent"), name: "one-at-a-time", concurrent: 1, responseTimeoutMs: 300 },
        route("sse"),
      ]),
    );
    routes = new EgressRoutes({ routesFile, secretsDir: secrets, credentialsDir: undefined });
    const loaded = routes.reload();
    assert.deepEqual(loaded, { ok: true, routes: 8, missingSecrets: [] });

    db = openDatabase(join(dir, "hypervisor.db"));
    for (const user of ["alice", "bob"]) db.prepare("INSERT INTO users (name, created_at) VALUES (?, ?)").run(user, now);
    const userKeys = new UserKeys(db, readSecretsKey(join(secrets, "secrets-key"), undefined));
    userKeys.set("bob", "echo", USER_KEY);
    userKeys.set("bob", "split", USER_KEY);
    metrics = new Metrics({ defaultMetrics: false });
    logFile = join(dir, "daemon.log");
    const log = pino({ level: "debug" }, pino.destination({ dest: logFile, sync: true }));
    const handler = createRouteHandler({
      routes,
      budgets: new Budgets(() => now),
      audit: new EgressAudit(new AuditLog(db), db, metrics.registry),
      log,
      userKeys,
      tls: { ca: ca.ca },
      now: () => now,
    });
    const a = await gatewayFor(handler, alice);
    const b = await gatewayFor(handler, bob);
    servers.push(a.server, b.server);
    alicePort = a.port;
    bobPort = b.port;
  });

  after(async () => {
    for (const s of servers) {
      s.closeAllConnections();
      s.close();
    }
    await Promise.all(Object.values(upstreams).map((u) => u.close()));
    db?.close();
    ca?.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  const hostile = {
    authorization: "Bearer hv-sandbox-token-SANDBOX",
    "x-api-key": "sandbox-x-api-key-SANDBOX",
    "api-key": "sandbox-api-key-SANDBOX",
    cookie: "hv_session=stolen-SANDBOX",
    "proxy-authorization": "Basic c2FuZGJveDp0b2tlbg==",
    connection: "keep-alive, x-hop",
    "x-hop": "hop-SANDBOX",
    "x-harmless": "kept",
  };

  it("injects the operator's key for a user without one, and the sandbox's credentials never reach the upstream", async () => {
    const reply = await call(alicePort, "/echo/v1/models?limit=2", { headers: hostile });
    assert.equal(reply.status, 200);
    const text = reply.body.toString();
    assert.doesNotMatch(text, /SANDBOX/, "no credential the sandbox sent reached the upstream");
    assert.doesNotMatch(text, new RegExp(OPERATOR_KEY), "the echoed key does not reach the caller");
    const seen = JSON.parse(text) as { url: string; headers: Record<string, string> };
    assert.equal(seen.url, "/v1/models?limit=2", "the path and query after the route name, as sent");
    assert.equal(seen.headers.authorization, `Bearer ${"*".repeat(OPERATOR_KEY.length)}`, "the upstream saw a key, masked on its way back");
    assert.equal(seen.headers["x-harmless"], "kept");
    assert.equal(seen.headers["x-api-key"], undefined);
    assert.equal(seen.headers["api-key"], undefined);
    assert.equal(seen.headers.cookie, undefined);
    assert.equal(seen.headers["proxy-authorization"], undefined);
    assert.equal(seen.headers["x-hop"], undefined, "a header the Connection field names is that hop's");
    assert.equal(seen.headers["accept-encoding"], "identity");
    assert.equal(reply.headers["x-echo-authorization"], `Bearer ${"*".repeat(OPERATOR_KEY.length)}`, "masked in response headers too");
  });

  it("the upstream really received the operator's key for alice and bob's own key for bob", async () => {
    await call(alicePort, "/split/x");
    assert.equal(lastSplitAuth, `Bearer ${OPERATOR_KEY}`);
    const bobReply = await call(bobPort, "/split/x", { headers: hostile });
    assert.equal(lastSplitAuth, `Bearer ${USER_KEY}`, "bob's stored key, not the operator's");
    const text = bobReply.body.toString();
    assert.equal(
      text,
      `you sent: Bearer ${"*".repeat(USER_KEY.length)} and again Bearer ${"*".repeat(USER_KEY.length)}.`,
      "masked though every byte came in its own chunk",
    );
  });

  it("the key echoed in one-byte chunks never reaches the caller", async () => {
    const reply = await call(alicePort, "/split/");
    assert.equal(lastSplitAuth, `Bearer ${OPERATOR_KEY}`);
    assert.ok(!reply.body.includes(OPERATOR_KEY));
    assert.ok(!reply.body.includes(OPERATOR_KEY.slice(0, 12)), "not even a part long enough to matter");
    assert.equal(reply.body.toString(), `you sent: Bearer ${"*".repeat(OPERATOR_KEY.length)} and again Bearer ${"*".repeat(OPERATOR_KEY.length)}.`);
  });

  it("streams server-sent events token by token, not buffered", async () => {
    const arrivals: { token: number; sentByThen: number }[] = [];
    await new Promise<void>((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port: alicePort, path: "/sse/v1/stream", headers: { accept: "text/event-stream" } }, (res) => {
        assert.equal(res.statusCode, 200);
        assert.equal(res.headers["content-type"], "text/event-stream");
        let text = "";
        res.on("data", (c: Buffer) => {
          text += c.toString();
          for (let m = /data: token-(\d+)\n\n/.exec(text); m; m = /data: token-(\d+)\n\n/.exec(text)) {
            arrivals.push({ token: Number(m[1]), sentByThen: sseSent });
            text = text.slice(m.index + m[0].length);
          }
        });
        res.on("end", resolve);
        res.on("error", reject);
      });
      req.on("error", reject);
      req.end();
    });
    assert.deepEqual(
      arrivals.map((a) => a.token),
      Array.from({ length: SSE_TOKENS }, (_, i) => i + 1),
      "every token, in order",
    );
    assert.ok(arrivals[0]!.sentByThen < SSE_TOKENS, `the first token arrived before the upstream sent the last (${arrivals[0]!.sentByThen} sent by then)`);
    // Each token reached the caller before the upstream had sent two more: nothing waits for the stream's end.
    const late = arrivals.filter((a) => a.sentByThen > a.token + 1);
    assert.ok(late.length <= 2, `tokens held back: ${JSON.stringify(late)}`);
  });

  it("passes a redirect on as it is and never follows it", async () => {
    const reply = await call(alicePort, "/redirect/somewhere");
    assert.equal(reply.status, 302);
    assert.equal(reply.headers.location, "http://169.254.77.77/latest/meta-data/", "Location as the upstream wrote it; the gateway sent nothing there");
  });

  it("refuses a compressed answer it could not search for the key", async () => {
    const reply = await call(alicePort, "/gzip/");
    assert.equal(reply.status, 502);
    const error = (JSON.parse(reply.body.toString()) as { error: { code: string; requestId: string } }).error;
    assert.equal(error.code, "upstream_unreachable");
    assert.ok(error.requestId);
  });

  it("gives up on an upstream that never answers (504), an unknown route (404), and a path that climbs out (400)", async () => {
    assert.equal((await call(alicePort, "/silent/")).status, 504);
    const unknown = await call(alicePort, "/nope/v1");
    assert.equal(unknown.status, 404);
    assert.match(unknown.body.toString(), /"code":"not_found"/);
    assert.equal((await call(alicePort, "/echo/v1/%2e%2e/admin")).status, 400);
    assert.equal((await call(alicePort, "/echo/v1/..%2fadmin")).status, 400);
  });

  it("lists the route names at the gateway's root, and audits no call for it", async () => {
    const rows = () => (db.prepare("SELECT COUNT(*) AS n FROM audit").get() as { n: number }).n;
    const before = rows();
    const listed = await call(alicePort, "/");
    assert.equal(listed.status, 200);
    assert.deepEqual(JSON.parse(listed.body.toString()), { routes: ["echo", "split", "redirect", "gzip", "silent", "budget", "one-at-a-time", "sse"] });
    assert.doesNotMatch(listed.body.toString(), /127\.0\.0\.1|provider/, "names only: no upstream, no secret name");
    assert.equal(rows(), before);
  });

  it("refuses an upstream whose certificate the CA did not sign", async () => {
    const handler = createRouteHandler({
      routes,
      budgets: new Budgets(),
      audit: new EgressAudit(new AuditLog(db), db, new Metrics({ defaultMetrics: false }).registry),
      log: pino({ level: "silent" }),
    });
    const g = await gatewayFor(handler, alice);
    servers.push(g.server);
    const reply = await call(g.port, "/echo/");
    assert.equal(reply.status, 502);
    assert.match(reply.body.toString(), /certificate was not trusted/);
  });

  it("answers 429 with Retry-After and a JSON error past the route's rpm, then allows again the next minute", async () => {
    assert.equal((await call(alicePort, "/budget/")).status, 200);
    assert.equal((await call(alicePort, "/budget/")).status, 200);
    const refused = await call(alicePort, "/budget/");
    assert.equal(refused.status, 429);
    assert.ok(Number(refused.headers["retry-after"]) >= 1 && Number(refused.headers["retry-after"]) <= 60);
    const error = (JSON.parse(refused.body.toString()) as { error: { code: string; message: string; requestId: string } }).error;
    assert.equal(error.code, "rate_limited");
    assert.match(error.message, /2 requests a minute/);
    assert.equal((await call(bobPort, "/budget/")).status, 200, "another user's budget is their own");
    now += 60_000;
    assert.equal((await call(alicePort, "/budget/")).status, 200, "the next minute allows again");
  });

  it("admits one call at a time on a route with concurrent 1, and the next once the first ended", async () => {
    const reached = once(silentCalls, "request");
    const first = call(alicePort, "/one-at-a-time/");
    await reached;
    const second = await call(alicePort, "/one-at-a-time/");
    assert.equal(second.status, 429);
    assert.match(second.body.toString(), /more than 1 requests at once/);
    assert.equal(second.headers["retry-after"], "1");
    assert.equal((await first).status, 504, "the first ran to the route's timeout");
    assert.equal((await call(alicePort, "/one-at-a-time/")).status, 504, "then the next was admitted (and timed out too)");
  });

  it("keeps the audit rows without query, body or key; neither key is in the database file, the log, the audit table or the metrics", async () => {
    await call(alicePort, "/echo/v1/chat?api_key=QUERYSECRET", { method: "POST", body: "BODYSECRET" });
    const log = new EgressAudit(new AuditLog(db), db, new Metrics({ defaultMetrics: false }).registry).log({ user: "alice", tail: 100 });
    const chat = log.find((e) => e.path === "/v1/chat");
    assert.ok(chat, "the call is in the log, its path without the query");
    assert.deepEqual(
      { user: chat.user, slot: chat.slot, generation: chat.generation, target: chat.target, method: chat.method, status: chat.status, decision: chat.decision },
      { user: "alice", slot: "a", generation: 3, target: "route:echo", method: "POST", status: 200, decision: "allowed" },
    );
    assert.equal(chat.bytesIn, "BODYSECRET".length);
    assert.ok(chat.bytesOut! > 0);
    assert.ok(log.some((e) => e.decision === "refused" && e.status === 429 && e.reason === "budget: rpm"));
    assert.ok(log.some((e) => e.decision === "refused" && e.status === 404));

    const metricsText = await metrics.text();
    assert.match(metricsText, /hypervisor_egress_requests_total\{route="echo",decision="allowed",status="2xx"\} \d+/);
    assert.match(metricsText, /hypervisor_egress_requests_total\{route="budget",decision="refused",status="4xx"\} 1/);
    assert.match(metricsText, /hypervisor_egress_requests_total\{route="unknown",decision="refused",status="4xx"\} 1/);
    assert.doesNotMatch(metricsText, /route="nope"/, "a name the sandbox made up is no label");

    db.pragma("wal_checkpoint(TRUNCATE)");
    const files = readdirSync(dir).filter((f) => f.startsWith("hypervisor.db") || f === "daemon.log");
    assert.ok(files.includes("hypervisor.db") && files.includes("daemon.log"));
    const haystacks: [string, Buffer][] = [
      ...files.map((f) => [f, readFileSync(join(dir, f))] as [string, Buffer]),
      ["audit table", Buffer.from(JSON.stringify(db.prepare("SELECT * FROM audit").all()))],
      ["metrics", Buffer.from(metricsText)],
    ];
    for (const [where, bytes] of haystacks) {
      for (const needle of [OPERATOR_KEY, USER_KEY, "QUERYSECRET", "BODYSECRET"]) assert.ok(!bytes.includes(needle), `${needle.slice(0, 12)}… not in ${where}`);
    }
    assert.ok(readFileSync(join(dir, "daemon.log")).length > 0, "the log was written (the certificate refusal), so the search above searched something");
  });

  // Last: its refused call would count in the metrics the test above reads.
  it("the reference sandbox calls a route with its token: the upstream gets the operator's key, the sandbox gets the answer with the key masked", async () => {
    const child = spawn(process.execPath, [join(repoRoot, "dist/sandbox/server.js")], {
      env: {
        PATH: process.env.PATH,
        PORT: "0",
        DATA_DIR: join(dir, "sandbox-data"),
        HYPERVISOR_EGRESS_URL: `http://127.0.0.1:${alicePort}`,
        HYPERVISOR_EGRESS_TOKEN: "hv-token-SANDBOX",
      },
      stdio: ["ignore", "pipe", "inherit"],
    });
    try {
      const [line] = (await once(child.stdout!, "data")) as [Buffer];
      const port = (JSON.parse(line.toString().split("\n")[0]!) as { port: number }).port;
      const base = `http://127.0.0.1:${port}`;
      assert.deepEqual(await (await fetch(`${base}/api/egress`)).json(), {
        gateway: true,
        routes: ["echo", "split", "redirect", "gzip", "silent", "budget", "one-at-a-time", "sse"],
      });
      const answer = (await (await fetch(`${base}/api/egress`, { method: "POST", body: JSON.stringify({ route: "echo", path: "/v1/models" }) })).json()) as {
        status: number;
        body: string;
      };
      assert.equal(answer.status, 200);
      const seen = JSON.parse(answer.body) as { url: string; headers: Record<string, string> };
      assert.equal(seen.url, "/v1/models");
      assert.equal(
        seen.headers.authorization,
        `Bearer ${"*".repeat(OPERATOR_KEY.length)}`,
        "the upstream got a key in place of the token, masked on the way back",
      );
      assert.doesNotMatch(answer.body, /SANDBOX/, "the sandbox's token never reached the upstream");
      const unknown = (await (await fetch(`${base}/api/egress`, { method: "POST", body: JSON.stringify({ route: "nope", path: "/" }) })).json()) as {
        status: number;
        error: { code: string; message: string };
      };
      assert.equal(unknown.status, 404);
      assert.equal(unknown.error.code, "not_found");
      assert.match(unknown.error.message, /no egress route "nope"; the routes are echo, /);
    } finally {
      child.kill("SIGKILL");
    }
  });
});

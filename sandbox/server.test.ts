import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { Agent, createServer, get, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it, type TestContext } from "node:test";
import { fileURLToPath } from "node:url";
import { WebSocket, type RawData } from "ws";

const SERVER = fileURLToPath(new URL("./server.js", import.meta.url));

interface RunningSandbox {
  base: string;
  wsBase: string;
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

async function makeDataDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "hv-sandbox-test-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Spawns the compiled server on port 0 and waits for the port it reports. */
async function startSandbox(t: TestContext, options: { dataDir: string; args?: string[]; env?: Record<string, string> }): Promise<RunningSandbox> {
  const child = spawn(process.execPath, [SERVER, ...(options.args ?? [])], {
    env: { PATH: process.env.PATH, PORT: "0", DATA_DIR: options.dataDir, ...options.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  let output = "";
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`sandbox did not start:\n${output}`)), 5000);
    let pending = "";
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
      output += chunk;
      pending += chunk;
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) {
        const record = JSON.parse(line) as { msg: string; port?: number };
        if (record.msg === "listening" && record.port) {
          clearTimeout(timer);
          resolve(record.port);
        }
      }
    });
    void exited.then(({ code }) => {
      clearTimeout(timer);
      reject(new Error(`sandbox exited with ${code} before listening:\n${output}`));
    });
  });
  return { base: `http://127.0.0.1:${port}`, wsBase: `ws://127.0.0.1:${port}`, child, exited };
}

function openSocket(t: TestContext, url: string, headers: Record<string, string> = {}): Promise<WebSocket> {
  const ws = new WebSocket(url, { headers });
  t.after(() => ws.terminate());
  return new Promise((resolve, reject) => {
    ws.once("open", () => resolve(ws));
    ws.on("error", reject);
  });
}

function closeOf(ws: WebSocket): Promise<{ code: number; reason: string }> {
  return new Promise((resolve) => ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() })));
}

function receiveJson(ws: WebSocket, count: number): Promise<Array<Record<string, unknown>>> {
  return new Promise((resolve) => {
    const messages: Array<Record<string, unknown>> = [];
    const onMessage = (data: RawData): void => {
      messages.push(JSON.parse(data.toString()) as Record<string, unknown>);
      if (messages.length === count) {
        ws.off("message", onMessage);
        resolve(messages);
      }
    };
    ws.on("message", onMessage);
  });
}

async function runTask(ws: WebSocket, id: string, input: string, steps: number): Promise<Array<Record<string, unknown>>> {
  const replies = receiveJson(ws, steps + 1);
  ws.send(JSON.stringify({ type: "task", id, input, steps }));
  return replies;
}

describe("reference sandbox server", { timeout: 30_000 }, () => {
  it("answers /health with its version, and X-Sandbox-Version on every response", async (t) => {
    const sandbox = await startSandbox(t, { dataDir: await makeDataDir(t), args: ["--version=7"] });
    const health = await fetch(`${sandbox.base}/health`);
    assert.equal(health.status, 200);
    assert.deepEqual(await health.json(), { status: "ok", version: "7" });
    assert.equal(health.headers.get("x-sandbox-version"), "7");

    const missing = await fetch(`${sandbox.base}/no/such/path`);
    assert.equal(missing.status, 404);
    assert.equal(((await missing.json()) as { error: string }).error, "not_found");
    assert.equal(missing.headers.get("x-sandbox-version"), "7");
  });

  it("fails its health check when started with --fail-health", async (t) => {
    const sandbox = await startSandbox(t, { dataDir: await makeDataDir(t), args: ["--fail-health"] });
    const health = await fetch(`${sandbox.base}/health`);
    assert.equal(health.status, 503);
    assert.deepEqual(await health.json(), { status: "failing" });
  });

  it("shows user, role and generation on the page, escaping header values", async (t) => {
    const sandbox = await startSandbox(t, {
      dataDir: await makeDataDir(t),
      args: ["--version=3"],
      env: { HYPERVISOR_USER: "alice", HYPERVISOR_GENERATION: "gen-env" },
    });
    const page = await fetch(`${sandbox.base}/`, {
      headers: { "X-Hypervisor-Role": '<script>alert("x")</script>', "X-Hypervisor-Generation": "gen-7" },
    });
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-type") ?? "", /^text\/html/);
    const html = await page.text();
    assert.ok(html.includes('<dd id="role">&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;</dd>'), html);
    assert.ok(!html.includes("<script>alert("));
    assert.ok(html.includes('<dd id="user">alice</dd>'));
    assert.ok(html.includes('<dd id="generation">gen-7</dd>'));
    assert.ok(html.includes('<dd id="version">3</dd>'));
    // Relative URLs only, so the page also works under the /dev/ prefix.
    assert.ok(html.includes("new URL('ws', location.href)"));
    assert.ok(html.includes("fetch('api/tasks'"));
  });

  it("reports identity at /whoami from headers, falling back to the environment", async (t) => {
    const sandbox = await startSandbox(t, {
      dataDir: await makeDataDir(t),
      env: { HYPERVISOR_USER: "alice", HYPERVISOR_SLOT: "b", HYPERVISOR_GENERATION: "g1" },
    });
    assert.deepEqual(await (await fetch(`${sandbox.base}/whoami`)).json(), {
      user: "alice",
      role: "unknown",
      generation: "g1",
      version: "1",
      slot: "b",
    });
    const fromHeaders = await fetch(`${sandbox.base}/whoami`, {
      headers: { "X-Hypervisor-User": "bob", "X-Hypervisor-Role": "dev", "X-Hypervisor-Generation": "g2" },
    });
    assert.deepEqual(await fromHeaders.json(), { user: "bob", role: "dev", generation: "g2", version: "1", slot: "b" });
  });

  it("runs a task over /ws with progress then result, and keeps its history across a restart", async (t) => {
    const dataDir = await makeDataDir(t);
    const first = await startSandbox(t, { dataDir, args: ["--version=1"] });
    const ws = await openSocket(t, `${first.wsBase}/ws`);
    const replies = await runTask(ws, "task-1", "hello sandbox", 4);
    assert.deepEqual(replies, [
      { type: "progress", id: "task-1", step: 1, of: 4 },
      { type: "progress", id: "task-1", step: 2, of: 4 },
      { type: "progress", id: "task-1", step: 3, of: 4 },
      { type: "progress", id: "task-1", step: 4, of: 4 },
      { type: "result", id: "task-1", output: "HELLO SANDBOX", version: "1" },
    ]);

    first.child.kill("SIGTERM");
    assert.equal((await first.exited).code, 0);

    const second = await startSandbox(t, { dataDir, args: ["--version=2"] });
    const { tasks } = (await (await fetch(`${second.base}/api/tasks`)).json()) as { tasks: Array<Record<string, unknown>> };
    assert.equal(tasks.length, 1);
    assert.deepEqual(
      { ...tasks[0], at: undefined },
      {
        id: "task-1",
        input: "hello sandbox",
        output: "HELLO SANDBOX",
        version: "1",
        at: undefined,
      },
    );
  });

  it("answers invalid task messages with an error and keeps the socket usable", async (t) => {
    const sandbox = await startSandbox(t, { dataDir: await makeDataDir(t) });
    const ws = await openSocket(t, `${sandbox.wsBase}/ws`);
    const errors = receiveJson(ws, 4);
    ws.send("not json");
    ws.send(JSON.stringify({ type: "task", id: "x", input: "a", steps: 21 }));
    ws.send(JSON.stringify({ type: "other" }));
    ws.send(Buffer.from([1, 2, 3]));
    for (const reply of await errors) {
      assert.equal(reply.type, "error");
      assert.equal(typeof reply.message, "string");
    }
    const replies = await runTask(ws, "after-errors", "still works", 1);
    assert.deepEqual(replies.at(-1), { type: "result", id: "after-errors", output: "STILL WORKS", version: "1" });
  });

  it("echoes 1,000 text and binary messages unchanged and in order on /ws/echo", async (t) => {
    const sandbox = await startSandbox(t, { dataDir: await makeDataDir(t) });
    const ws = await openSocket(t, `${sandbox.wsBase}/ws/echo`);
    const sent = Array.from({ length: 1000 }, (_, i) =>
      i % 2 === 0 ? { binary: false, data: Buffer.from(`message ${i} ✓`) } : { binary: true, data: randomBytes(1 + (i % 300)) },
    );
    const received = new Promise<Array<{ binary: boolean; data: Buffer }>>((resolve) => {
      const messages: Array<{ binary: boolean; data: Buffer }> = [];
      ws.on("message", (data, isBinary) => {
        messages.push({ binary: isBinary, data: data as Buffer });
        if (messages.length === sent.length) resolve(messages);
      });
    });
    for (const message of sent) ws.send(message.binary ? message.data : message.data.toString(), { binary: message.binary });
    assert.deepEqual(await received, sent);
  });

  it("closes an echo socket with the code the client asks for", async (t) => {
    const sandbox = await startSandbox(t, { dataDir: await makeDataDir(t) });
    const ws = await openSocket(t, `${sandbox.wsBase}/ws/echo`);
    const closed = closeOf(ws);
    ws.send("close:4001");
    assert.deepEqual(await closed, { code: 4001, reason: "requested" });
  });

  it("floods an echo socket with as many messages of the size the client asks for", async (t) => {
    const sandbox = await startSandbox(t, { dataDir: await makeDataDir(t) });
    const ws = await openSocket(t, `${sandbox.wsBase}/ws/echo`);
    const received = new Promise<Buffer[]>((resolve) => {
      const messages: Buffer[] = [];
      ws.on("message", (data, isBinary) => {
        assert.ok(isBinary);
        messages.push(data as Buffer);
        if (messages.length === 3) resolve(messages);
      });
    });
    ws.send("flood:3x70000");
    assert.deepEqual(
      await received,
      [0, 1, 2].map(() => Buffer.alloc(70_000, 0x5a)),
    );
  });

  it("streams server-sent events as they are produced, not buffered", async (t) => {
    const sandbox = await startSandbox(t, { dataDir: await makeDataDir(t) });
    const response = await fetch(`${sandbox.base}/sse?n=3&interval=300`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get("content-type") ?? "", /^text\/event-stream/);
    assert.ok(response.body);
    const events: Array<{ data: string; at: number }> = [];
    let text = "";
    const decoder = new TextDecoder();
    for await (const chunk of response.body) {
      text += decoder.decode(chunk, { stream: true });
      let end: number;
      while ((end = text.indexOf("\n\n")) !== -1) {
        events.push({ data: text.slice(0, end), at: performance.now() });
        text = text.slice(end + 2);
      }
    }
    assert.deepEqual(
      events.map((event) => event.data),
      ["data: 1", "data: 2", "data: 3"],
    );
    // The last event is sent 600 ms after the first; buffering would deliver them together.
    const spread = events[2]!.at - events[0]!.at;
    assert.ok(spread >= 450, `events arrived within ${spread} ms of each other`);
  });

  it("answers a 5 MB upload with its byte count and SHA-256", async (t) => {
    const sandbox = await startSandbox(t, { dataDir: await makeDataDir(t) });
    const body = randomBytes(5 * 1024 * 1024);
    const response = await fetch(`${sandbox.base}/upload`, { method: "POST", body });
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), {
      bytes: body.length,
      sha256: createHash("sha256").update(body).digest("hex"),
    });
  });

  it("streams a download chunked, with the repeating 0..255 pattern", async (t) => {
    const sandbox = await startSandbox(t, { dataDir: await makeDataDir(t) });
    const response = await fetch(`${sandbox.base}/download?bytes=200001`);
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("content-length"), null);
    assert.equal(response.headers.get("transfer-encoding"), "chunked");
    const body = Buffer.from(await response.arrayBuffer());
    assert.equal(body.length, 200_001);
    assert.ok(body.every((byte, i) => byte === i % 256));
  });

  it("echoes method, url and headers as received at /echo/...", async (t) => {
    const sandbox = await startSandbox(t, { dataDir: await makeDataDir(t) });
    const response = await fetch(`${sandbox.base}/echo/some/path?q=1`, {
      method: "PUT",
      headers: { "X-Forwarded-For": "203.0.113.9" },
      body: "ignored",
    });
    const echoed = (await response.json()) as { method: string; url: string; headers: Record<string, string> };
    assert.equal(echoed.method, "PUT");
    assert.equal(echoed.url, "/echo/some/path?q=1");
    assert.equal(echoed.headers["x-forwarded-for"], "203.0.113.9");
  });

  it("records every request and upgrade, in memory and in requests.jsonl", async (t) => {
    const dataDir = await makeDataDir(t);
    const sandbox = await startSandbox(t, { dataDir });
    await (await fetch(`${sandbox.base}/whoami`, { headers: { "X-Hypervisor-User": "carol" } })).text();
    const ws = await openSocket(t, `${sandbox.wsBase}/ws/echo`, { "X-Hypervisor-User": "carol" });
    ws.close();
    await assert.rejects(openSocket(t, `${sandbox.wsBase}/not-a-socket`), /Unexpected server response: 404/);

    const { requests } = (await (await fetch(`${sandbox.base}/__sandbox/requests`)).json()) as {
      requests: Array<Record<string, unknown>>;
    };
    const summary = requests.map(({ method, url, user, upgrade }) => ({ method, url, user, upgrade }));
    assert.deepEqual(summary, [
      { method: "GET", url: "/whoami", user: "carol", upgrade: false },
      { method: "GET", url: "/ws/echo", user: "carol", upgrade: true },
      { method: "GET", url: "/not-a-socket", user: null, upgrade: true },
      { method: "GET", url: "/__sandbox/requests", user: null, upgrade: false },
    ]);

    sandbox.child.kill("SIGTERM");
    await sandbox.exited;
    const lines = (await readFile(join(dataDir, "requests.jsonl"), "utf8")).trim().split("\n");
    assert.deepEqual(
      lines.map((line) => (JSON.parse(line) as { url: string }).url),
      ["/whoami", "/ws/echo", "/not-a-socket", "/__sandbox/requests"],
    );
  });

  it("exits 0 within 2 s on SIGTERM, closing open WebSockets with 1001", async (t) => {
    const sandbox = await startSandbox(t, { dataDir: await makeDataDir(t) });
    const ws = await openSocket(t, `${sandbox.wsBase}/ws/echo`);
    const closed = closeOf(ws);
    // An idle keep-alive connection and a long-running stream must not hold the process open.
    const agent = new Agent({ keepAlive: true });
    t.after(() => agent.destroy());
    await new Promise<void>((resolve, reject) => {
      get(`${sandbox.base}/health`, { agent }, (res) => res.resume().on("end", resolve)).on("error", reject);
    });
    const stream = await new Promise<IncomingMessage>((resolve, reject) => {
      get(`${sandbox.base}/sse?n=100&interval=1000`, resolve).on("error", reject);
    });
    stream.on("error", () => {});
    stream.resume();

    const started = performance.now();
    sandbox.child.kill("SIGTERM");
    const exit = await sandbox.exited;
    const elapsed = performance.now() - started;
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.ok(elapsed < 2000, `took ${elapsed} ms to exit`);
    assert.equal((await closed).code, 1001);
  });

  it("keeps a counter in its data directory that continues across restarts, shown on its page; --rewrite-data overwrites it", async (t) => {
    const dataDir = await makeDataDir(t);
    const first = await startSandbox(t, { dataDir });
    const post = async (base: string) => ((await (await fetch(`${base}/counter`, { method: "POST" })).json()) as { count: number }).count;
    assert.equal(await post(first.base), 1);
    assert.equal(await post(first.base), 2);
    first.child.kill("SIGTERM");
    await first.exited;
    assert.equal((await readFile(join(dataDir, "counter"), "utf8")).trim(), "2");
    const second = await startSandbox(t, { dataDir });
    assert.deepEqual(await (await fetch(`${second.base}/counter`)).json(), { count: 2 });
    assert.match(await (await fetch(`${second.base}/`)).text(), /<output id="data-counter"[^>]*>2<\/output>/);
    second.child.kill("SIGTERM");
    await second.exited;
    const bad = await startSandbox(t, { dataDir, args: ["--rewrite-data", "--version=bad"] });
    assert.deepEqual(await (await fetch(`${bad.base}/counter`)).json(), { count: -1 });
    assert.equal((await readFile(join(dataDir, "rewritten-by"), "utf8")).trim(), "bad");
  });
  it("says on its page whether it is live or dev, links to the account page and to sign out, and never says slot", async (t) => {
    const account = "https://hv.example.test/_hv/account";
    const sandbox = await startSandbox(t, {
      dataDir: await makeDataDir(t),
      env: { HYPERVISOR_USER: "alice", HYPERVISOR_SLOT: "b", HYPERVISOR_ACCOUNT_URL: account },
    });
    const page = async (role?: string) => (await fetch(`${sandbox.base}/`, { headers: role ? { "X-Hypervisor-Role": role } : {} })).text();
    const live = await page("live");
    assert.match(live, /<html lang="en" data-role="live">/);
    assert.match(live, /<strong id="role-label">Live<\/strong>/);
    assert.match(live, /<title>Live · Your sandbox<\/title>/);
    const dev = await page("dev");
    assert.match(dev, /<html lang="en" data-role="dev">/);
    assert.match(dev, /<strong id="role-label">Dev<\/strong>/);
    assert.match(await page(), /data-role="none"[\s\S]*<strong id="role-label">Direct<\/strong>/, "without the hypervisor's header it claims neither");
    assert.match(await page("<b>x</b>"), /data-role="none"/, "a role it does not know is neither");
    for (const html of [live, dev]) {
      assert.ok(html.includes(`<a id="hv-account" href="${account}">Your account</a>`), "the account page, on the hypervisor's own origin");
      assert.ok(html.includes(`<a id="hv-sign-out" href="${account}#logout">Sign out</a>`), "signing out is the account page's button");
      assert.doesNotMatch(html, /\bslot\b/i, "no slot jargon on the page");
      assert.match(html, /prefers-color-scheme: dark/);
    }

    const fallback = await startSandbox(t, { dataDir: await makeDataDir(t), env: { HYPERVISOR_ACCOUNT_URL: "javascript:alert(1)" } });
    const html = await (await fetch(`${fallback.base}/`)).text();
    assert.ok(html.includes('<a id="hv-account" href="/_hv/account">'), "only an http(s) URL becomes the link");
    assert.doesNotMatch(html, /javascript:/);
  });

  it("says plainly that it has no egress gateway when none was given, and refuses a route call", async (t) => {
    const sandbox = await startSandbox(t, { dataDir: await makeDataDir(t) });
    const html = await (await fetch(`${sandbox.base}/`)).text();
    assert.match(html, /<p id="egress-status" role="status">This sandbox was given no egress gateway[^<]*HYPERVISOR_EGRESS=none or open[^<]*<\/p>/);
    assert.doesNotMatch(html, /id="egress-form"/, "no form to call what is not there");
    assert.deepEqual(await (await fetch(`${sandbox.base}/api/egress`)).json(), {
      gateway: false,
      message:
        "This sandbox was given no egress gateway (no HYPERVISOR_EGRESS_URL): the hypervisor runs with HYPERVISOR_EGRESS=none or open, so there are no routes to call.",
    });
    const call = await fetch(`${sandbox.base}/api/egress`, { method: "POST", body: JSON.stringify({ route: "echo", path: "/" }) });
    assert.equal(call.status, 503);
    assert.equal(((await call.json()) as { error: string }).error, "no_gateway");
  });

  it("lists the gateway's routes and calls one with its own token, passing the answer and the gateway's refusals on", async (t) => {
    const seen: Array<{ url: string; authorization: string | undefined }> = [];
    const gateway = createServer((req, res) => {
      seen.push({ url: req.url ?? "", authorization: req.headers.authorization });
      const reply = (status: number, body: unknown) => {
        res.writeHead(status, { "content-type": "application/json" });
        res.end(JSON.stringify(body));
      };
      if (req.url === "/") return reply(200, { routes: ["echo", "models"] });
      if (req.url?.startsWith("/echo/")) return reply(200, { path: req.url });
      reply(404, { error: { code: "not_found", message: 'no egress route "nope"; the routes are echo, models', requestId: "r1" } });
    });
    await new Promise<void>((resolve) => gateway.listen(0, "127.0.0.1", resolve));
    t.after(() => {
      gateway.closeAllConnections();
      gateway.close();
    });
    const sandbox = await startSandbox(t, {
      dataDir: await makeDataDir(t),
      env: { HYPERVISOR_EGRESS_URL: `http://127.0.0.1:${(gateway.address() as AddressInfo).port}`, HYPERVISOR_EGRESS_TOKEN: "tok-123" },
    });
    const html = await (await fetch(`${sandbox.base}/`)).text();
    assert.match(html, /<form id="egress-form" hidden>/, "the form shows once the routes are known");
    assert.deepEqual(await (await fetch(`${sandbox.base}/api/egress`)).json(), { gateway: true, routes: ["echo", "models"] });

    const post = (body: unknown) => fetch(`${sandbox.base}/api/egress`, { method: "POST", body: JSON.stringify(body) });
    const ok = await post({ route: "echo", path: "/v1/models?limit=2" });
    assert.equal(ok.status, 200);
    assert.deepEqual(await ok.json(), { status: 200, contentType: "application/json", body: '{"path":"/echo/v1/models?limit=2"}', truncated: false });
    const refused = await post({ route: "nope", path: "/" });
    assert.deepEqual(await refused.json(), {
      status: 404,
      contentType: "application/json",
      body: '{"error":{"code":"not_found","message":"no egress route \\"nope\\"; the routes are echo, models","requestId":"r1"}}',
      truncated: false,
      error: { code: "not_found", message: 'no egress route "nope"; the routes are echo, models' },
    });
    assert.deepEqual(
      seen.map((s) => s.authorization),
      ["Bearer tok-123", "Bearer tok-123", "Bearer tok-123"],
      "every call carries the sandbox's token (the page itself asks the gateway nothing)",
    );

    for (const bad of [
      { route: "../x", path: "/" },
      { route: "echo", path: "//evil.example/" },
      { route: "echo", path: "no-slash" },
      { route: "echo" },
      "not an object",
    ]) {
      const r = await post(bad);
      assert.equal(r.status, 400, JSON.stringify(bad));
      assert.equal(((await r.json()) as { error: string }).error, "bad_request");
    }
    assert.equal(seen.length, 3, "nothing bad reached the gateway");
  });
});

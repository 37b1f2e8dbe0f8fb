import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { connect, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { WebSocket } from "ws";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
import { daemonEnv, spawnDaemon, tempDir, type SpawnedDaemon } from "../helpers/daemon.js";
import { freePort } from "../helpers/ports.js";
import { parsePrometheusText } from "../helpers/prometheus-text.js";
import { testUser } from "../helpers/run-id.js";
import { openWs, upgradeStatus } from "../helpers/ws-client.js";

const ORIGIN = "http://hv.limits";
const MAX_REQUESTS = 32;
const MAX_WEBSOCKETS = 4;
/** The daemon's descriptors: fewer than two per request of the flood (client and upstream), as the audit's 10,500 were past 20,000. */
const DAEMON_NOFILE = 1024;
const FLOOD = 700;

/**
 * The audit's F10: one user holding many hung requests made another user's requests fail (the
 * daemon ran out of descriptors). The real daemon as its own process, its descriptors bounded
 * as a small host's are, in front of real sandboxes (process runtime); real sockets throughout.
 */
describe("per-user bounds on what the proxy holds", () => {
  const state = tempDir();
  let daemon: SpawnedDaemon;
  let url: string;
  const mallory = testUser("lim-mallory");
  const bob = testUser("lim-bob");
  const cookies: Record<string, string> = {};
  const flood: Socket[] = [];

  before(async () => {
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    daemon = await spawnDaemon(
      daemonEnv(state.path, {
        HYPERVISOR_LISTEN: `127.0.0.1:${port}`,
        HYPERVISOR_PUBLIC_ORIGIN: ORIGIN,
        HYPERVISOR_USER_MAX_REQUESTS: String(MAX_REQUESTS),
        HYPERVISOR_USER_MAX_WEBSOCKETS: String(MAX_WEBSOCKETS),
      }),
    );
    const limited = spawnSync("prlimit", ["--pid", String(daemon.child.pid), `--nofile=${DAEMON_NOFILE}:${DAEMON_NOFILE}`], { encoding: "utf8" });
    assert.equal(limited.status, 0, limited.stderr);
    for (const user of [mallory, bob]) {
      const client = new PublicClient(url, ORIGIN);
      await client.register(user, new SoftwareAuthenticator(ORIGIN));
      assert.ok(client.cookie, `${user} is signed in`);
      cookies[user] = `hv_session=${client.cookie}`;
      // Both live sandboxes run before the flood: a start is not what is measured.
      assert.equal((await client.get("/whoami")).status, 200);
    }
  });
  after(async () => {
    for (const socket of flood) socket.destroy();
    for (const user of [mallory, bob]) await daemon?.operator.post(`/sandboxes/${user}/live/stop`).catch(() => undefined);
    await daemon?.kill("SIGTERM");
    state.remove();
  });

  /** Sends a request that the sandbox answers with headers and then holds (an event stream); resolves with the status line's code. */
  function hungRequest(cookie: string): Promise<number> {
    const socket = connect(Number(new URL(url).port), "127.0.0.1");
    flood.push(socket);
    socket.on("error", () => undefined);
    socket.write(`GET /sse?n=2&interval=600000 HTTP/1.1\r\nHost: hv.limits\r\nCookie: ${cookie}\r\n\r\n`);
    return new Promise((resolve) => {
      socket.once("data", (chunk: Buffer) => resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(chunk.toString("latin1"))?.[1] ?? 0)));
      socket.once("close", () => resolve(-1));
    });
  }

  /** Bob's requests, `n` at once (within his own bound) in `rounds`, each on a new connection with a deadline: those not answered 200. */
  async function bobFailures(n: number, rounds: number): Promise<{ failed: number; reasons: string[] }> {
    const reasons: string[] = [];
    for (let round = 0; round < rounds; round++) {
      await Promise.all(
        Array.from({ length: n }, async () => {
          try {
            const res = await fetch(`${url}/whoami`, { headers: { cookie: cookies[bob]!, connection: "close" }, signal: AbortSignal.timeout(5000) });
            await res.arrayBuffer();
            if (res.status !== 200) reasons.push(String(res.status));
          } catch (err) {
            reasons.push((err as Error).name);
          }
        }),
      );
    }
    return { failed: reasons.length, reasons };
  }

  it("keeps every request of another user working while one user floods it with hung requests", async () => {
    const statuses = await Promise.all(Array.from({ length: FLOOD }, () => hungRequest(cookies[mallory]!)));
    const { failed, reasons } = await bobFailures(MAX_REQUESTS / 2, 3);
    assert.equal(failed, 0, `bob's requests failed: ${reasons.join(", ")}`);
    const seen = new Map<number, number>();
    for (const s of statuses) seen.set(s, (seen.get(s) ?? 0) + 1);
    assert.equal(seen.get(200), MAX_REQUESTS, `held by the sandbox; statuses: ${JSON.stringify([...seen])}`);
    assert.equal(seen.get(429), FLOOD - MAX_REQUESTS, "the rest is refused at once");
  });

  it("refuses past the bound with 429, Retry-After and the JSON error, and takes requests again as held ones end", async () => {
    const res = await fetch(`${url}/whoami`, { headers: { cookie: cookies[mallory]! } });
    assert.equal(res.status, 429);
    assert.equal(res.headers.get("retry-after"), "1");
    const body = (await res.json()) as { error: { code: string; message: string; requestId: string; details: { limit: string } } };
    assert.equal(body.error.code, "rate_limited");
    assert.match(body.error.message, new RegExp(`${MAX_REQUESTS} requests in flight`));
    assert.equal(body.error.details.limit, "requests");
    assert.equal(typeof body.error.requestId, "string");
    for (const socket of flood.splice(0)) socket.destroy();
    let status = 0;
    for (const end = Date.now() + 5000; status !== 200 && Date.now() < end; await sleep(50)) {
      status = (await fetch(`${url}/whoami`, { headers: { cookie: cookies[mallory]! } })).status;
    }
    assert.equal(status, 200, "closed requests give their place back");
  });

  it("bounds one user's WebSockets, refusing the next upgrade with 429 while another user's open", async () => {
    const headers = (user: string) => ({ cookie: cookies[user]!, origin: ORIGIN });
    const open: WebSocket[] = [];
    try {
      for (let i = 0; i < MAX_WEBSOCKETS; i++) open.push(await openWs(url, "/ws/echo", headers(mallory)));
      assert.equal(await upgradeStatus(`${url.replace("http", "ws")}/ws/echo`, headers(mallory)), 429);
      open.push(await openWs(url, "/ws/echo", headers(bob)));
      open.shift()!.close();
      let status = 0;
      for (const end = Date.now() + 5000; status !== 101 && Date.now() < end; await sleep(50)) {
        status = await upgradeStatus(`${url.replace("http", "ws")}/ws/echo`, headers(mallory));
      }
      assert.equal(status, 101, "a closed WebSocket gives its place back");
    } finally {
      for (const ws of open) ws.terminate();
    }
  });

  it("counts each refusal in the metrics and audits a few per source and minute", async () => {
    const metrics = parsePrometheusText(String((await daemon.operator.get<string>("/metrics")).body));
    assert.ok((metrics.value("hypervisor_proxy_limited_total", { limit: "requests" }) ?? 0) >= FLOOD - MAX_REQUESTS + 1);
    assert.ok((metrics.value("hypervisor_proxy_limited_total", { limit: "websockets" }) ?? 0) >= 1);
    const audit = (await daemon.operator.get<{ entries: { action: string; actor: string; outcome: string; target?: string }[] }>("/audit?limit=500")).body
      .entries;
    const rows = audit.filter((e) => e.action === "proxy.limited");
    assert.ok(rows.length >= 1, "refusals are audited");
    assert.ok(rows.length <= 10, `a flood is not written row by row (${rows.length} rows)`);
    assert.ok(rows.every((r) => r.actor === mallory && r.outcome === "refused"));
  });
});

import assert from "node:assert/strict";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { request } from "node:http";
import { connect, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { Endpoint } from "../../proxy/target.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { testUser } from "../helpers/run-id.js";
import { openWs } from "../helpers/ws-client.js";
import { logText } from "../../hypervisor/runtime/log-lines.js";

const ORIGIN = "http://hv.test";
const MIB = 1024 * 1024;
/** Messages of 1 MiB a sandbox sends at once to a client that does not read. */
const FLOOD = 64;
const KEY = "dGhlIHNhbXBsZSBub25jZQ=="; // RFC 6455 §1.3's sample nonce: 16 bytes, base64

/**
 * TCP connections open to the sandbox (state 01, ESTABLISHED), counted at this host's end: the
 * sandbox may listen in a network namespace of its own, whose sockets this /proc/net does not show.
 */
function sandboxConnections(endpoint: Endpoint): number {
  // /proc/net/tcp writes an IPv4 address as its 32 bits in host (little-endian) order, in hex.
  const address = endpoint.host
    .split(".")
    .reverse()
    .map((o) => Number(o).toString(16).toUpperCase().padStart(2, "0"))
    .join("");
  const remote = `${address}:${endpoint.port.toString(16).toUpperCase().padStart(4, "0")}`;
  let n = 0;
  for (const line of readFileSync("/proc/net/tcp", "utf8").split("\n").slice(1)) {
    const [, , rem, state] = line.trim().split(/\s+/);
    if (rem === remote && state === "01") n++;
  }
  return n;
}

/**
 * Whether the sandbox is back to at most `before` open connections within a few seconds: some
 * (health checks, the log reads) are still closing when counted.
 */
async function backTo(endpoint: Endpoint, before: number): Promise<boolean> {
  const deadline = Date.now() + 3000;
  while (sandboxConnections(endpoint) > before && Date.now() < deadline) await sleep(50);
  return sandboxConnections(endpoint) <= before;
}

/** Upgrades the sandbox has seen; its own log, read over a connection that does not stay open. */
function sandboxUpgrades(endpoint: Endpoint): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ ...endpoint, path: "/__sandbox/requests", agent: false }, (res) => {
      let body = "";
      res.on("data", (c: Buffer) => (body += c.toString()));
      res.on("end", () => resolve((JSON.parse(body) as { requests: { upgrade: boolean }[] }).requests.filter((r) => r.upgrade).length));
    });
    req.on("error", reject);
    req.end();
  });
}

/** Writes an upgrade request exactly as given; resolves with the socket and the first bytes of the answer. */
function rawUpgrade(port: number, lines: string[]): Promise<{ socket: Socket; answer: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("data", (c: Buffer) => resolve({ socket, answer: c.toString("latin1") }));
    socket.once("error", reject);
    socket.write(`${lines.join("\r\n")}\r\n\r\n`);
  });
}

describe("WebSocket forwarding through the real daemon", () => {
  let t: TestDaemon;
  let port: number;
  let sandbox: Endpoint;
  const alice = testUser("wsf-alice");
  let cookie: string;

  before(async () => {
    t = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN } });
    port = Number(new URL(t.publicUrl).port);
    await t.operator.post("/users", { name: alice });
    cookie = `hv_session=${t.daemon.services.sessions.create(alice, "full").token}`;
    sandbox = (await t.daemon.services.manager.ensure(alice, "live")).endpoint;
  });
  after(async () => {
    await t.daemon.services.manager.stop(alice, "live").catch(() => undefined);
    await t.close();
  });

  const handshake = (overrides: Record<string, string | undefined> = {}, method = "GET") => {
    const fields: Record<string, string | undefined> = {
      Host: "hv.test",
      Origin: ORIGIN,
      Cookie: cookie,
      Connection: "Upgrade",
      Upgrade: "websocket",
      "Sec-WebSocket-Key": KEY,
      "Sec-WebSocket-Version": "13",
      ...overrides,
    };
    return [`${method} /ws/echo HTTP/1.1`, ...Object.entries(fields).flatMap(([name, value]) => (value === undefined ? [] : [`${name}: ${value}`]))];
  };

  /** Sends each handshake `rounds` times; returns the first bytes of each answer. */
  const attempt = async (cases: [string, string[]][], rounds: number) => {
    const answers: [string, string][] = [];
    for (let round = 0; round < rounds; round++) {
      for (const [what, lines] of cases) {
        const { socket, answer } = await rawUpgrade(port, lines);
        answers.push([what, answer]);
        socket.destroy();
      }
    }
    return answers;
  };

  it("leaves no connection to the sandbox open after upgrades that are not WebSocket handshakes", async () => {
    const before = sandboxConnections(sandbox);
    const answers = await attempt(
      [
        [
          "an h2c upgrade",
          handshake({ Upgrade: "h2c", "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA", "Sec-WebSocket-Key": undefined, "Sec-WebSocket-Version": undefined }),
        ],
        ["no Sec-WebSocket-Key", handshake({ "Sec-WebSocket-Key": undefined })],
        ["a key that is not 16 bytes", handshake({ "Sec-WebSocket-Key": "c2hvcnQ=" })],
        ["no Sec-WebSocket-Version", handshake({ "Sec-WebSocket-Version": undefined })],
        ["a POST", handshake({}, "POST")],
      ],
      10,
    );
    assert.ok(await backTo(sandbox, before), `no connection to the sandbox is left open (${sandboxConnections(sandbox)} > ${before})`);
    for (const [what, answer] of answers) assert.match(answer, /^HTTP\/1\.1 400 /, what);
  });

  it("refuses a handshake RFC 6455 §4.2.1 does not allow before any byte reaches the sandbox", async () => {
    const upgradesBefore = await sandboxUpgrades(sandbox);
    const answers = await attempt(
      [
        ["an h2c upgrade", handshake({ Upgrade: "h2c" })],
        ["no Sec-WebSocket-Key", handshake({ "Sec-WebSocket-Key": undefined })],
        ["version 8", handshake({ "Sec-WebSocket-Version": "8" })],
        ["a POST", handshake({}, "POST")],
      ],
      1,
    );
    assert.equal(await sandboxUpgrades(sandbox), upgradesBefore, "no refused handshake reached the sandbox");
    for (const [what, answer] of answers) {
      assert.match(answer, /^HTTP\/1\.1 400 /, what);
      // §4.4: a refused version is answered with the version the server speaks.
      if (what === "version 8") assert.match(answer, /\r\nsec-websocket-version: 13\r\n/i);
    }
  });

  it("refuses a malformed subprotocol list, and the daemon lives on", async () => {
    // The ws client throws on these; before the check, that was an unhandled rejection.
    const answers = await attempt(
      [
        ["a duplicated subprotocol", handshake({ "Sec-WebSocket-Protocol": "chat, chat" })],
        ["a subprotocol that is not a token", handshake({ "Sec-WebSocket-Protocol": "a b" })],
      ],
      1,
    );
    for (const [what, answer] of answers) assert.match(answer, /^HTTP\/1\.1 400 /, what);
    const ws = await openWs(t.publicUrl, "/ws/echo", { cookie, origin: ORIGIN });
    ws.close();
  });

  it("closes the sandbox's leg when the client is gone before the bridge exists", async () => {
    const before = sandboxConnections(sandbox);
    for (let i = 0; i < 20; i++) {
      const socket = connect(port, "127.0.0.1");
      socket.on("error", () => undefined);
      socket.write(`${handshake().join("\r\n")}\r\n\r\n`);
      // Half the clients half-close right after the handshake, the others vanish altogether.
      if (i % 2) socket.end();
      else setImmediate(() => socket.destroy());
    }
    assert.ok(await backTo(sandbox, before), `every upstream leg whose client went away is closed (${sandboxConnections(sandbox)} > ${before})`);
    const deadline = Date.now() + 3000;
    while (t.daemon.proxy.websockets.openCount() > 0 && Date.now() < deadline) await sleep(50);
    assert.equal(t.daemon.proxy.websockets.openCount(), 0);
  });

  /** Bytes the daemon holds for its bridges, waiting to be written to either leg. */
  const buffered = () => [...t.daemon.proxy.websockets.select(() => true)].reduce((n, b) => n + b.client.bufferedAmount + b.upstream.bufferedAmount, 0);

  it("holds about a megabyte for a client that stops reading while its sandbox floods it, and loses nothing", async () => {
    const ws = await openWs(t.publicUrl, "/ws/echo", { cookie, origin: ORIGIN });
    let received = 0;
    let bytes = 0;
    ws.on("message", (data: Buffer) => {
      received++;
      bytes += data.length;
    });
    // The client stops reading its socket: first the kernel's buffers fill, then the daemon's would.
    ws.pause();
    ws.send(`flood:${FLOOD}x${MIB}`);
    let most = 0;
    for (const end = Date.now() + 3000; Date.now() < end; await sleep(20)) most = Math.max(most, buffered());
    assert.ok(most <= 3 * MIB, `the daemon held ${(most / MIB).toFixed(1)} MiB for one bridge`);

    ws.resume();
    for (const end = Date.now() + 20_000; received < FLOOD && Date.now() < end;) await sleep(20);
    assert.equal(received, FLOOD, "every message arrives once the client reads again");
    assert.equal(bytes, FLOOD * MIB);
    const closed = once(ws, "close");
    ws.close();
    await closed;
    for (const end = Date.now() + 3000; t.daemon.proxy.websockets.openCount() > 0 && Date.now() < end;) await sleep(20);
    assert.equal(t.daemon.proxy.websockets.openCount(), 0);
    assert.equal(buffered(), 0);
  });

  it("bounds what one user's bridges hold together for clients that do not read, ending the bridges past it", async () => {
    // The audit's second F10 flood: bridges whose sandbox sends a 16 MiB message to a client
    // that never reads. Each alone is within its bridge's bound; together they must not be.
    const BRIDGES = 5;
    const sockets = await Promise.all(Array.from({ length: BRIDGES }, () => openWs(t.publicUrl, "/ws/echo", { cookie, origin: ORIGIN })));
    const ended = sockets.map((ws) => once(ws, "close"));
    for (const ws of sockets) {
      ws.pause();
      ws.send(`flood:1x${16 * MIB}`);
    }
    let most = 0;
    for (const end = Date.now() + 5000; Date.now() < end; await sleep(20)) most = Math.max(most, buffered());
    assert.ok(most <= 32 * MIB + BRIDGES * MIB, `the daemon held ${(most / MIB).toFixed(1)} MiB for one user's ${BRIDGES} bridges`);
    assert.ok(t.daemon.proxy.websockets.openCount() <= 2, "the bridges past the bound were ended");
    for (const ws of sockets) ws.terminate();
    await Promise.all(ended);
    for (const end = Date.now() + 3000; t.daemon.proxy.websockets.openCount() > 0 && Date.now() < end;) await sleep(20);
    assert.equal(buffered(), 0);
  });

  it("closes both legs with 1009 when either sends a message over the limit", async () => {
    const slot = (await t.daemon.services.manager.ensure(alice, "live")).slot;
    // The echo socket logs the code its closing handshake carried.
    const tooBig = async () =>
      (await logText(t.daemon.services.runtime.logs(alice, slot, { tail: 200, follow: false }))).split('"msg":"echo closed","code":1009').length - 1;
    const sandboxToldAfter = async (before: number) => {
      for (const end = Date.now() + 5000; Date.now() < end; await sleep(50)) if ((await tooBig()) > before) return true;
      return false;
    };

    // From the sandbox: the client is told why, not just dropped.
    let before = await tooBig();
    const down = await openWs(t.publicUrl, "/ws/echo", { cookie, origin: ORIGIN });
    const outcome = new Promise<string>((resolve) => {
      down.once("message", () => resolve("delivered"));
      down.once("close", (code) => resolve(`closed ${code}`));
    });
    down.send(`flood:1x${17 * MIB}`);
    assert.equal(await outcome, "closed 1009", "RFC 6455 §7.4.1: message too big");
    assert.ok(await sandboxToldAfter(before), "the sandbox's leg is closed with 1009");

    // From the client: the sandbox is told why.
    before = await tooBig();
    const up = await openWs(t.publicUrl, "/ws/echo", { cookie, origin: ORIGIN });
    const upClosed = once(up, "close");
    up.send(Buffer.alloc(17 * MIB));
    assert.equal((await upClosed)[0], 1009);
    assert.ok(await sandboxToldAfter(before), "the sandbox's leg is closed with 1009");
  });
});

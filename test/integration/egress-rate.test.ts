import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AddressSet } from "../../proxy/addresses.js";
import { openDatabase, type Db } from "../../hypervisor/db/database.js";
import { EgressAllowList } from "../../hypervisor/egress/allow-list.js";
import { EgressGateway } from "../../hypervisor/egress/gateway.js";
import { EgressTokens } from "../../hypervisor/egress/tokens.js";
import { createLogger } from "../../hypervisor/logger.js";
import { makeInternet, type Internet } from "../helpers/internet.js";

/** The sandbox's rate here: small, so that a loopback download would run far past it unshaped. */
const RATE = 256 * 1024;
const CONNECTIONS = 4;
const WINDOW_MS = 2000;
/** Each connection's download: far more than the window lets through at the rate. */
const DOWNLOAD = 16 * 1024 ** 2;
/** Read but not yet counted against the bucket when the window closes: one read per connection. */
const ONE_READ = 64 * 1024;

/** A CONNECT, a GET of `path` through the tunnel, and the tunnelled bytes received until `stop` resolves. */
function download(port: number, target: string, auth: string, path: string, stop: Promise<void>): Promise<number> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    let head = Buffer.alloc(0);
    let tunnelled = -1;
    socket.on("data", (chunk: Buffer) => {
      if (tunnelled >= 0) return void (tunnelled += chunk.length);
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      assert.match(head.toString("latin1"), /^HTTP\/1\.1 200 /);
      tunnelled = head.length - end - 4;
      socket.write(`GET ${path} HTTP/1.1\r\nHost: ${target}\r\nConnection: close\r\n\r\n`);
    });
    socket.on("error", () => undefined);
    void stop.then(() => {
      socket.destroy();
      resolve(Math.max(0, tunnelled));
    });
    socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\nProxy-Authorization: ${auth}\r\n\r\n`);
  });
}

// HYPERVISOR_EGRESS_SANDBOX_RATE: one sandbox's forward-proxy calls, every connection together,
// move no more than its rate (a second's burst, then the rate), so its downloads cannot take the
// gateway's one event loop from everyone else. Real sockets: the upstream is this test's own
// "internet" namespace; the sandbox downloads on several tunnels at once.
describe("the forward proxy holds each sandbox to its rate", () => {
  const dir = mkdtempSync(join(tmpdir(), "hv-egress-rate-"));
  let internet: Internet;
  let db: Db;
  let gateway: EgressGateway;
  let port: number;
  let auth: string;

  before(async () => {
    internet = await makeInternet();
    db = openDatabase(join(dir, "hypervisor.db"));
    const tokens = new EgressTokens(db);
    const token = tokens.issue({ user: "mallory", slot: "a", generation: 1 });
    tokens.bind("mallory", "a", "127.0.0.1");
    auth = `Basic ${Buffer.from(`sandbox:${token}`).toString("base64")}`;
    gateway = new EgressGateway({
      tokens,
      allow: EgressAllowList.parse(internet.cidr),
      resolve: async () => [],
      own: AddressSet.empty,
      log: createLogger("silent"),
      limits: { bytesPerSecond: RATE },
    });
    port = (await gateway.listen("127.0.0.1", 0)).port;
  });
  after(async () => {
    await gateway?.close();
    db?.close();
    internet?.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  it(`moves at most a second's burst plus its rate, over ${CONNECTIONS} tunnels at once`, async () => {
    const started = performance.now();
    const stop = new Promise<void>((resolve) => setTimeout(resolve, WINDOW_MS));
    const received = await Promise.all(Array.from({ length: CONNECTIONS }, () => download(port, `${internet.address}:80`, auth, `/bytes/${DOWNLOAD}`, stop)));
    const seconds = (performance.now() - started) / 1000;
    const total = received.reduce((a, b) => a + b, 0);
    const bound = RATE + RATE * seconds + CONNECTIONS * ONE_READ;
    assert.ok(total > 0, "the downloads ran");
    assert.ok(total <= bound, `${total} bytes in ${seconds.toFixed(2)} s over ${CONNECTIONS} tunnels, bound ${Math.round(bound)}`);
  });
});

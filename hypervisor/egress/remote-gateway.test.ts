import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { loadConfig } from "../config.js";
import { openDatabase, type Db } from "../db/database.js";
import { createLogger } from "../logger.js";
import type { SandboxSpec } from "../runtime/container-runtime.js";
import { EgressAllowList } from "./allow-list.js";
import { openRemoteEgress, RemoteHostAddresses, type RemoteEgressSide } from "./remote-gateway.js";
import { EgressTokens } from "./tokens.js";

const log = createLogger("silent");
const spec = (user: string) => ({ user, slot: "a", generation: { id: 3 }, env: {}, limits: {} }) as unknown as SandboxSpec;

/** What the listener answers a CONNECT from `localAddress` with: its status line, or "" when it closed the connection unanswered. */
function statusFrom(port: number, localAddress: string, token: string | undefined, target = "nowhere.test:443"): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port, localAddress });
    let text = "";
    socket.on("data", (chunk) => (text += chunk.toString()));
    socket.once("close", () => resolve(text.split("\r\n")[0] ?? ""));
    socket.once("error", () => undefined);
    const auth = token ? `Proxy-Authorization: Basic ${Buffer.from(`sandbox:${token}`).toString("base64")}\r\n` : "";
    socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n${auth}\r\n`);
  });
}

// The listener for remote hosts on loopback: 127.0.0.1 plays a registered host, 127.0.0.2 a stranger.
// What a remote host's firewall does is proven in test/integration/remote-egress.test.ts.
describe("the egress gateway's listener for remote hosts (DESIGN §5b, §8a)", () => {
  const dir = mkdtempSync(join(tmpdir(), "hv-remote-gateway-"));
  let db: Db;
  let tokens: EgressTokens;
  let side: RemoteEgressSide;
  let port: number;

  before(async () => {
    db = openDatabase(join(dir, "hypervisor.db"));
    tokens = new EgressTokens(db);
    // Loopback is refused by the configuration; the function takes what it is given.
    // 203.0.113.0/24 (documentation, routed nowhere) plays the operator's allowed private network.
    const config = {
      ...loadConfig({ HYPERVISOR_RUNTIME: "podman" }),
      egressRemoteListen: { host: "127.0.0.1", port: 0 },
      egressAllow: EgressAllowList.parse("203.0.113.0/24"),
    };
    side = await openRemoteEgress(config, tokens, log, { resolve: async () => [] }, new RemoteHostAddresses());
    port = Number(side.status.gateway!.split(":")[1]);
  });
  after(async () => {
    await side.close();
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("admits registered hosts' addresses only, from registration to release", async () => {
    assert.equal(side.remote.mode, "gateway");
    assert.equal(await statusFrom(port, "127.0.0.1", undefined), "", "no host registered: closed unanswered");
    const host = side.remote.forHost("127.0.0.1");
    assert.equal(await statusFrom(port, "127.0.0.1", undefined), "HTTP/1.1 407 Proxy Authentication Required");
    assert.equal(await statusFrom(port, "127.0.0.2", undefined), "", "a stranger is closed unanswered");
    host.release();
    assert.equal(await statusFrom(port, "127.0.0.1", undefined), "");
  });

  it("sends a remote sandbox to the listener, its token valid from its host's address only", async () => {
    const host = side.remote.forHost("::ffff:127.0.0.1");
    try {
      const env = host.egress.envFor(spec("alice"));
      assert.equal(env.HYPERVISOR_EGRESS_URL, side.status.gateway && `http://${side.status.gateway}`);
      const token = env.HYPERVISOR_EGRESS_TOKEN!;
      // The runtime binds the container's own address; the host's is the one its connections come from.
      host.egress.bind("alice", "a", "10.88.0.7");
      const proxyAuth = { "proxy-authorization": `Basic ${Buffer.from(`sandbox:${token}`).toString("base64")}` };
      assert.deepEqual(tokens.identify(proxyAuth, "127.0.0.1"), { user: "alice", slot: "a", generation: 3 });
      assert.equal(tokens.identify(proxyAuth, "10.88.0.7"), undefined);
      // Admitted, identified, and then refused as the allow list says (nothing is allowed here).
      assert.equal(await statusFrom(port, "127.0.0.1", token), "HTTP/1.1 403 Forbidden");
      host.egress.revoke("alice", "a");
      assert.equal(await statusFrom(port, "127.0.0.1", token), "HTTP/1.1 407 Proxy Authentication Required");
    } finally {
      host.release();
    }
  });

  // A host's firewall admits the hypervisor's address to its published ports and its API: a call
  // through the gateway to a registered host would reach another user's sandbox or the host's
  // Podman, even where the allow list names the host's network.
  it("never connects to a registered host's address or API endpoint, allowed network or not, from registration to release", async () => {
    const sandbox = side.remote.forHost("127.0.0.1");
    const other = side.remote.forHost("203.0.113.7", "203.0.113.8");
    try {
      const token = sandbox.egress.envFor(spec("mallory")).HYPERVISOR_EGRESS_TOKEN!;
      sandbox.egress.bind("mallory", "a", "10.88.0.9");
      for (const target of ["203.0.113.7:38211", "203.0.113.8:2375", "[::ffff:203.0.113.7]:38211"])
        assert.equal(await statusFrom(port, "127.0.0.1", token, target), "HTTP/1.1 403 Forbidden", target);
    } finally {
      other.release();
      sandbox.egress.revoke("mallory", "a");
      sandbox.release();
    }
  });

  it("forgets a host's addresses with its last registration", () => {
    const hosts = new RemoteHostAddresses();
    const first = hosts.add("203.0.113.7", "203.0.113.8");
    const second = hosts.add("::ffff:203.0.113.7");
    assert.ok(hosts.admits("203.0.113.7") && hosts.has("203.0.113.8") && !hosts.admits("203.0.113.8"));
    first();
    first();
    assert.ok(hosts.has("203.0.113.7") && !hosts.has("203.0.113.8"), "the second registration still holds the host's address");
    second();
    assert.ok(!hosts.has("203.0.113.7") && !hosts.admits("203.0.113.7"));
  });

  it("without HYPERVISOR_EGRESS_REMOTE_LISTEN in gateway mode, remote sandboxes get no way out, and it is said", async () => {
    const none = await openRemoteEgress(loadConfig({ HYPERVISOR_RUNTIME: "podman" }), tokens, log, {}, new RemoteHostAddresses());
    try {
      assert.equal(none.remote.mode, "none");
      assert.match(none.status.reason ?? "", /HYPERVISOR_EGRESS_REMOTE_LISTEN is not set/);
      const host = none.remote.forHost("10.0.0.2");
      assert.deepEqual(host.egress.envFor(spec("bob")), {}, "no proxy variables, no token");
      host.release();
    } finally {
      await none.close();
    }
  });
});

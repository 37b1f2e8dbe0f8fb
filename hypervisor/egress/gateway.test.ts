import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { request } from "node:http";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AddressSet } from "../../proxy/addresses.js";
import { openDatabase, type Db } from "../db/database.js";
import { createLogger } from "../logger.js";
import { EgressAllowList } from "./allow-list.js";
import { EgressGateway } from "./gateway.js";
import { EgressTokens, type Caller } from "./tokens.js";

// The gateway's own contract on loopback: origin-form requests are the credential routes' (the
// hook), each identified by the sandbox's token from its own address; connections per sandbox
// are bounded. Forwarding and the kernel's part are proven in test/integration/egress-suite.ts.
describe("the egress gateway's route hook and bounds", () => {
  const dir = mkdtempSync(join(tmpdir(), "hv-gateway-"));
  let db: Db;
  let tokens: EgressTokens;
  let gateway: EgressGateway;
  let port: number;
  let token: string;

  before(async () => {
    db = openDatabase(join(dir, "hypervisor.db"));
    tokens = new EgressTokens(db);
    token = tokens.issue({ user: "alice", slot: "a", generation: 7 });
    tokens.bind("alice", "a", "127.0.0.1");
    gateway = new EgressGateway({
      tokens,
      allow: EgressAllowList.empty,
      resolve: async () => [],
      own: AddressSet.empty,
      log: createLogger("silent"),
      limits: { perSandbox: 5 },
    });
    port = (await gateway.listen("127.0.0.1", 0)).port;
  });
  after(async () => {
    await gateway.close();
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  function get(path: string, headers: Record<string, string>, localAddress = "127.0.0.1"): Promise<{ status: number; body: string }> {
    return new Promise((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port, path, headers, localAddress, agent: false }, (res) => {
        let body = "";
        res.on("data", (c: Buffer) => (body += c.toString()));
        res.on("end", () => resolve({ status: res.statusCode!, body }));
      });
      req.on("error", reject);
      req.end();
    });
  }

  it("answers a route request with 404 JSON while no handler is plugged in", async () => {
    const res = await get("/openai/v1/models", { authorization: `Bearer ${token}` });
    assert.equal(res.status, 404);
    assert.equal((JSON.parse(res.body) as { error: { code: string } }).error.code, "not_found");
  });

  it("hands the handler the caller named by the token, sent as Bearer, x-api-key or api-key", async () => {
    const seen: Caller[] = [];
    gateway.setRouteHandler((_req, res, caller) => {
      seen.push(caller);
      res.end("routed");
    });
    try {
      for (const headers of [{ authorization: `Bearer ${token}` }, { "x-api-key": token }, { "api-key": token }] as Record<string, string>[]) {
        assert.deepEqual(await get("/openai/v1/models", headers), { status: 200, body: "routed" });
      }
      assert.deepEqual(seen, Array(3).fill({ user: "alice", slot: "a", generation: 7 }));
      assert.equal((await get("/openai/v1/models", {})).status, 401, "no token");
      assert.equal((await get("/openai/v1/models", { authorization: "Bearer hvegress_forged" })).status, 401, "a forged token");
      assert.equal((await get("/openai/v1/models", { authorization: `Bearer ${token}` }, "127.0.0.2")).status, 401, "the token from another address");
      assert.equal(
        (await get("/openai/v1/models", { "proxy-authorization": `Basic ${Buffer.from(`sandbox:${token}`).toString("base64")}` })).status,
        401,
        "a route takes the token as the provider's key, not as proxy credentials",
      );
      assert.equal(seen.length, 3);
    } finally {
      gateway.setRouteHandler(undefined);
    }
  });

  it("keeps a token that survives a restart (hashed in SQLite) and forgets it when revoked", async () => {
    const again = new EgressTokens(db);
    assert.deepEqual(again.identify({ "x-api-key": token }, "::ffff:127.0.0.1", true), { user: "alice", slot: "a", generation: 7 });
    again.revoke("alice", "a");
    assert.equal(new EgressTokens(db).identify({ "x-api-key": token }, "127.0.0.1", true), undefined);
    token = tokens.issue({ user: "alice", slot: "a", generation: 7 });
    tokens.bind("alice", "a", "127.0.0.1");
  });

  it("asks the forward proxy's accounting before connecting: a spent budget is a 429 with Retry-After, a refused destination is recorded", async () => {
    const begun: string[] = [];
    const refused: string[] = [];
    gateway.setForwardAccounting({
      begin: (caller, method, host) => {
        begun.push(`${caller.user} ${method} ${host}`);
        return { ok: false, message: "more than 2 requests a minute to proxy; try again in 42 s", retryAfterSeconds: 42 };
      },
      refused: (caller, method, host, status) => void refused.push(`${caller.user} ${method} ${host} ${status}`),
    });
    const allowed = new EgressGateway({
      tokens,
      // A documentation address, allowed by name and block (no packet is sent: the budget refuses first).
      allow: EgressAllowList.parse("api.example.org,203.0.113.0/24"),
      resolve: async () => ["203.0.113.7"],
      own: AddressSet.empty,
      log: createLogger("silent"),
    });
    const { port: allowedPort } = await allowed.listen("127.0.0.1", 0);
    allowed.setForwardAccounting({
      begin: (caller, method, host) => {
        begun.push(`${caller.user} ${method} ${host}`);
        return { ok: false, message: "more than 2 requests a minute to proxy; try again in 42 s", retryAfterSeconds: 42 };
      },
      refused: () => assert.fail("an allowed destination is not a refusal"),
    });
    const connectTo = (p: number, target: string) =>
      new Promise<string>((resolve, reject) => {
        const socket = connect({ host: "127.0.0.1", port: p });
        let answer = "";
        socket.on("data", (c: Buffer) => (answer += c.toString()));
        socket.on("close", () => resolve(answer));
        socket.on("error", reject);
        const auth = Buffer.from(`sandbox:${token}`).toString("base64");
        socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\nProxy-Authorization: Basic ${auth}\r\n\r\n`);
      });
    try {
      const spent = await connectTo(allowedPort, "api.example.org:443");
      assert.match(spent, /^HTTP\/1\.1 429 Too Many Requests\r\n/);
      assert.match(spent, /\r\nRetry-After: 42\r\n/);
      assert.match(spent, /"code":"rate_limited"/);
      assert.deepEqual(begun, ["alice CONNECT api.example.org"]);
      const notAllowed = await connectTo(port, "elsewhere.example.org:443");
      assert.match(notAllowed, /^HTTP\/1\.1 403 /);
      assert.deepEqual(refused, ["alice CONNECT elsewhere.example.org 403"]);
      assert.equal(begun.length, 1, "a refused destination spends no budget");
    } finally {
      gateway.setForwardAccounting(undefined);
      await allowed.close();
    }
  });

  it("ends the call of a sandbox that went away while its destination was checked, so its budget is not held", async () => {
    const ends: number[] = [];
    let begun = 0;
    const slow = new EgressGateway({
      tokens,
      allow: EgressAllowList.parse("api.example.org,203.0.113.0/24"),
      // The check takes a while: the sandbox hangs up meanwhile, before any connection is made.
      resolve: () => new Promise((resolve) => setTimeout(() => resolve(["203.0.113.7"]), 300)),
      own: AddressSet.empty,
      log: createLogger("silent"),
    });
    const { port: slowPort } = await slow.listen("127.0.0.1", 0);
    slow.setForwardAccounting({
      begin: () => {
        begun++;
        return { ok: true, call: { flow: () => undefined, end: ({ status }) => void ends.push(status) } };
      },
      refused: () => assert.fail("allowed"),
    });
    try {
      const socket = connect({ host: "127.0.0.1", port: slowPort });
      socket.on("error", () => undefined);
      const auth = Buffer.from(`sandbox:${token}`).toString("base64");
      socket.write(`GET http://api.example.org/v1 HTTP/1.1\r\nHost: api.example.org\r\nProxy-Authorization: Basic ${auth}\r\n\r\n`);
      await new Promise((resolve) => setTimeout(resolve, 50));
      socket.destroy();
      await new Promise((resolve) => setTimeout(resolve, 600));
      assert.equal(begun, 1);
      assert.deepEqual(ends, [499], "ended once, as gone");
    } finally {
      await slow.close();
    }
  });

  it("closes connections past the bound for one source at once, and serves another source", async () => {
    const sockets = await Promise.all(
      Array.from(
        { length: 20 },
        () =>
          new Promise<ReturnType<typeof connect>>((resolve) => {
            const socket = connect({ host: "127.0.0.1", port, localAddress: "127.0.0.3" });
            socket.on("error", () => undefined);
            socket.once("connect", () => resolve(socket));
          }),
      ),
    );
    await new Promise((resolve) => setTimeout(resolve, 200));
    try {
      assert.ok(gateway.connectionsOf("127.0.0.3") <= 5, `held ${gateway.connectionsOf("127.0.0.3")}`);
      assert.equal((await get("/openai/v1/models", { authorization: `Bearer ${token}` })).status, 404, "another source still gets an answer");
    } finally {
      for (const socket of sockets) socket.destroy();
    }
  });
});

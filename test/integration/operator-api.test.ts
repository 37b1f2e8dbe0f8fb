import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { Agent } from "node:http";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { AuditEntry } from "../../hypervisor/audit/audit-log.js";
import { errorStatus, type ErrorCode } from "../../hypervisor/errors.js";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { OperatorClient, type OperatorResponse } from "../helpers/operator-client.js";
import { testUser } from "../helpers/run-id.js";
import { baseUrl, getJson } from "../helpers/sandbox-client.js";

/**
 * The operator API as an operator meets it: every route refuses bad input with the one JSON
 * error shape and touches nothing, the listeners are guarded (socket mode, bearer token), and
 * what it does is started, stopped and audited for real (process runtime).
 */

interface SandboxRow {
  user: string;
  role: "live" | "dev";
  slot: "a" | "b";
  generation: number;
  state: "running" | "starting" | "stopped" | "not started";
  endpoint: { host: string; port: number } | null;
  startedAt: string | null;
}

const KIB = 1024;
const STACK_TRACE = /\n\s+at\s|\s{4}at\s|node_modules|\.[cm]?[jt]s:\d+:\d+/;

/** Asserts the one error shape: `{ error: { code, message, requestId } }`, never a stack. */
function assertJsonError(res: OperatorResponse, expected: { status?: number | number[]; code?: ErrorCode; mentions?: RegExp } = {}): void {
  const text = typeof res.body === "string" ? res.body : JSON.stringify(res.body);
  const allowed = expected.status === undefined ? undefined : Array.isArray(expected.status) ? expected.status : [expected.status];
  assert.notEqual(res.status, 500, `never a 500: ${text}`);
  if (allowed) assert.ok(allowed.includes(res.status), `status ${res.status}, expected ${allowed.join(" or ")}: ${text}`);
  assert.match(String(res.headers["content-type"]), /^application\/json/, `a JSON error, got ${res.headers["content-type"]}: ${text}`);
  assert.ok(res.body !== null && typeof res.body === "object" && !Array.isArray(res.body), `a JSON object: ${text}`);
  assert.deepEqual(Object.keys(res.body), ["error"], `only the error member at the top: ${text}`);
  const e = res.body.error as Record<string, unknown>;
  assert.equal(typeof e.code, "string", text);
  assert.ok((e.code as string) in errorStatus, `a known error code: ${text}`);
  assert.equal(errorStatus[e.code as ErrorCode], res.status, `the status belongs to the code: ${text}`);
  if (expected.code) assert.equal(e.code, expected.code, text);
  assert.equal(typeof e.message, "string", text);
  assert.ok((e.message as string).trim().length > 0, `a non-empty message: ${text}`);
  if (expected.mentions) assert.match(e.message as string, expected.mentions, `the message names what is wrong: ${text}`);
  assert.equal(typeof e.requestId, "string", text);
  assert.ok((e.requestId as string).length > 0, `a request id: ${text}`);
  assert.equal(e.requestId, res.headers["x-request-id"], "the body's requestId is the X-Request-Id header");
  assert.doesNotMatch(text, STACK_TRACE, `no stack trace or source location in the body: ${text}`);
}

/**
 * A request exactly as given: no content-type is added (OperatorClient adds one with a body),
 * on its own connection unless an agent is given.
 */
function rawRequest(
  target: { socketPath: string },
  method: string,
  path: string,
  body?: string | Buffer,
  headers: Record<string, string> = {},
  agent: Agent | false = false,
): Promise<OperatorResponse> {
  return new OperatorClient(target).send(method, path, body, headers, { bare: true, agent, timeoutMs: 10_000 });
}

interface Snapshot {
  sandboxes: SandboxRow[];
  statusUsers: number;
  running: number;
  users: string[];
  auditRows: number;
  lastAuditId: number;
  sandboxDirs: string[];
}

/** Everything a refused request must leave alone, seen through the API and beside it. */
async function snapshot(t: TestDaemon): Promise<Snapshot> {
  const list = await t.operator.get<{ sandboxes: SandboxRow[] }>("/sandboxes");
  assert.equal(list.status, 200, JSON.stringify(list.body));
  const status = await t.operator.get("/status");
  assert.equal(status.status, 200, JSON.stringify(status.body));
  // Refused calls are audited themselves (operator-api-refusals.test.ts); the rest must not change.
  const audit = t.daemon.services.audit.list({ limit: 1_000_000 }).filter((e) => e.action !== "operator.refused");
  const dir = join(t.stateDir, "sandboxes");
  return {
    sandboxes: list.body.sandboxes,
    statusUsers: status.body.users,
    running: status.body.sandboxes.running,
    users: t.daemon.services.users.users(),
    auditRows: audit.length,
    lastAuditId: audit[0]?.id ?? 0,
    sandboxDirs: existsSync(dir) ? readdirSync(dir).sort() : [],
  };
}

/** Audit entries newer than `afterId` but refusals (as in snapshot()), oldest first. */
function auditSince(t: TestDaemon, afterId: number): AuditEntry[] {
  return t.daemon.services.audit
    .list({ limit: 1_000_000 })
    .filter((e) => e.id > afterId && e.action !== "operator.refused")
    .reverse();
}

/** Stops every sandbox of these users: process sandboxes are detached and outlive the daemon. */
async function stopAll(t: TestDaemon | undefined, users: string[]): Promise<void> {
  if (!t) return;
  for (const user of users) {
    for (const role of ["live", "dev"] as const) await t.daemon.services.manager.stop(user, role).catch(() => undefined);
  }
}

async function refused(url: string): Promise<boolean> {
  return fetch(url, { signal: AbortSignal.timeout(2000) }).then(
    () => false,
    () => true,
  );
}

interface BadCase {
  why: string;
  method: string;
  path: string;
  body?: string | Buffer;
  headers?: Record<string, string>;
  /** Send without any content-type header. */
  bare?: boolean;
  /**
   * Send on a connection of its own: a refused oversized body would otherwise leave the shared
   * keep-alive pool with a connection the daemon drops later (its own test below shows that).
   */
  ownConnection?: boolean;
  status: number | number[];
  code?: ErrorCode;
  mentions?: RegExp;
}

describe("operator API over the unix socket (process runtime)", () => {
  let t: TestDaemon;
  const created: string[] = [];
  // An existing user, so that a route which skipped its validation would act on someone real.
  const alice = testUser("api-alice");
  const ghost = testUser("api-ghost");

  before(async () => {
    t = await bootDaemon();
    created.push(alice);
    const res = await t.operator.post("/users", { name: alice });
    assert.equal(res.status, 201, JSON.stringify(res.body));
  });
  after(async () => {
    await stopAll(t, created);
    await t?.close();
  });

  describe("bad input: a 400-class JSON error that changes nothing", () => {
    const userShapes: [string, string][] = [
      ["Alice", "an upper-case letter"],
      ["a..b", "dots"],
      ["%2e%2e", "an encoded dot-dot"],
      ["a".repeat(33), "33 characters"],
      ["-x", "a leading dash"],
      ["x-", "a trailing dash"],
      ["a_b", "an underscore"],
      ["a%20b", "a space"],
      ["a%2Fb", "an encoded slash"],
      ["%00", "a NUL byte"],
      [encodeURIComponent("ålice"), "a non-ASCII letter"],
      [encodeURIComponent("\u0430lice"), "a Cyrillic look-alike"],
      [encodeURIComponent("😀"), "an emoji"],
    ];
    // Shapes a URL parser may resolve into another path first: then no route matches (404).
    const mayReroute = new Set(["%2e%2e"]);
    const cases: BadCase[] = [];

    for (const [user, why] of userShapes) {
      for (const action of ["start", "stop", "restart"]) {
        cases.push({
          why: `user with ${why}`,
          method: "POST",
          path: `/sandboxes/${user}/live/${action}`,
          status: mayReroute.has(user) ? [400, 404] : 400,
          code: mayReroute.has(user) ? undefined : "validation_failed",
          mentions: mayReroute.has(user) ? undefined : /user/,
        });
      }
      cases.push({ why: `user filter with ${why}`, method: "GET", path: `/sandboxes?user=${user}`, status: 400, code: "validation_failed", mentions: /user/ });
    }
    cases.push(
      { why: "an empty user filter", method: "GET", path: "/sandboxes?user=", status: 400, code: "validation_failed", mentions: /user/ },
      { why: "two user filters", method: "GET", path: `/sandboxes?user=${alice}&user=${alice}`, status: 400, code: "validation_failed", mentions: /user/ },
      { why: "an empty user segment", method: "POST", path: "/sandboxes//live/start", status: [400, 404] },
    );

    for (const [role, why] of [
      ["prod", "an unknown role"],
      ["LIVE", "an upper-case role"],
      ["Dev", "a capitalised role"],
      ["live%20", "a role with a trailing space"],
      ["dev%00", "a role with a NUL byte"],
      ["a", "a slot name instead of a role"],
    ] as const) {
      cases.push({ why, method: "POST", path: `/sandboxes/${alice}/${role}/start`, status: 400, code: "validation_failed", mentions: /role/ });
    }
    cases.push({ why: "an empty role", method: "POST", path: `/sandboxes/${alice}//start`, status: [400, 404] });

    for (const [action, why] of [
      ["destroy", "an unknown action"],
      ["START", "an upper-case action"],
      ["remove", "an action the API does not offer"],
      ["start%20", "an action with a trailing space"],
    ] as const) {
      cases.push({ why, method: "POST", path: `/sandboxes/${alice}/live/${action}`, status: 400, code: "validation_failed", mentions: /action/ });
    }
    cases.push({ why: "an empty action", method: "POST", path: `/sandboxes/${alice}/live/`, status: [400, 404] });

    const fresh = testUser("api-never");
    const json = (body: string, why: string, extra: Partial<BadCase> = {}): BadCase => ({
      why,
      method: "POST",
      path: "/users",
      body,
      status: 400,
      ...extra,
    });
    cases.push(
      json('{"name":', "truncated JSON", { code: "bad_request" }),
      json("{name: 'x'}", "JSON5, not JSON", { code: "bad_request" }),
      json("", "an empty body with a JSON content-type"),
      json("[]", "an array", { code: "validation_failed" }),
      json('"x"', "a string", { code: "validation_failed" }),
      json("5", "a number", { code: "validation_failed" }),
      json("null", "null", { code: "validation_failed" }),
      json("{}", "no name", { code: "validation_failed", mentions: /name/ }),
      json('{"name":5}', "a numeric name", { code: "validation_failed", mentions: /name/ }),
      json('{"name":null}', "a null name", { code: "validation_failed", mentions: /name/ }),
      json(`{"name":["${fresh}"]}`, "a name in an array", { code: "validation_failed", mentions: /name/ }),
      json(`{"name":"${fresh}","admin":true}`, "an extra key", { code: "validation_failed" }),
      json(`{"name":"${fresh}","__proto__":{"x":1}}`, "a __proto__ key", { code: "validation_failed" }),
      json('{"name":"Alice"}', "an upper-case name", { code: "validation_failed", mentions: /name/ }),
      json(`{"name":"${"a".repeat(33)}"}`, "a 33-character name", { code: "validation_failed", mentions: /name/ }),
      json('{"name":"-x"}', "a name with a leading dash", { code: "validation_failed", mentions: /name/ }),
      json('{"name":"a..b"}', "a name with dots", { code: "validation_failed", mentions: /name/ }),
      json('{"name":"../etc"}', "a path as name", { code: "validation_failed", mentions: /name/ }),
      json('{"name":"\u00e5lice"}', "a non-ASCII name", { code: "validation_failed", mentions: /name/ }),
      json('{"name":""}', "an empty name", { code: "validation_failed", mentions: /name/ }),
      json(`{"name":"${fresh}"}`, "no content-type at all", { bare: true, status: [400, 415] }),
      json(`{"name":"${fresh}"}`, "a text/plain body", { headers: { "content-type": "text/plain" }, status: [400, 415] }),
      json(`name=${fresh}`, "a form body", { headers: { "content-type": "application/x-www-form-urlencoded" }, status: [400, 415] }),
      { why: "no body at all", method: "POST", path: "/users", status: [400, 415] },
      // Whitespace keeps the JSON valid: only the size limit can refuse it.
      json(`{"name":"${fresh}"}${" ".repeat(100 * KIB)}`, "a 100 KiB body", { status: 413, code: "payload_too_large", ownConnection: true }),
      json(`{"name":"${fresh}"}${" ".repeat(100 * KIB)}`, "a 100 KiB chunked body", {
        ownConnection: true,
        status: 413,
        code: "payload_too_large",
        headers: { "content-type": "application/json", "transfer-encoding": "chunked" },
      }),
      json(`{"name":"${fresh}"}${" ".repeat(2 * 1024 * KIB)}`, "a 2 MiB body", { status: 413, code: "payload_too_large", ownConnection: true }),
      {
        why: "a 100 KiB body on a sandbox action",
        method: "POST",
        path: `/sandboxes/${alice}/live/start`,
        body: `{}${" ".repeat(100 * KIB)}`,
        status: 413,
        code: "payload_too_large",
        ownConnection: true,
      },
      {
        why: "a 100 KiB chunked body on a sandbox action",
        method: "POST",
        path: `/sandboxes/${alice}/live/start`,
        body: `{}${" ".repeat(100 * KIB)}`,
        headers: { "content-type": "application/json", "transfer-encoding": "chunked" },
        status: 413,
        code: "payload_too_large",
        ownConnection: true,
      },
    );

    for (const [method, path, why] of [
      ["GET", "/", "the root"],
      ["GET", "/nope", "an unknown route"],
      ["GET", "/sandboxes/x", "a partial sandbox path"],
      ["POST", `/sandboxes/${alice}/live`, "an action path without the action"],
      ["POST", `/sandboxes/${alice}/live/start/now`, "an action path with an extra segment"],
      ["GET", "/openapi.yaml", "a document that does not exist"],
      ["GET", "/STATUS", "a route in the wrong case"],
    ] as const) {
      cases.push({ why, method, path, status: 404, code: "not_found" });
    }
    for (const [method, path] of [
      ["PUT", "/users"],
      ["GET", `/users/${alice}/disable`],
      // A user is removed with DELETE, never read alone (GET /users lists them).
      ["GET", `/users/${alice}`],
      ["DELETE", "/users"],
      ["POST", "/status"],
      ["DELETE", "/status"],
      ["POST", "/sandboxes"],
      ["DELETE", "/sandboxes"],
      ["GET", `/sandboxes/${alice}/live/start`],
      ["PUT", `/sandboxes/${alice}/live/start`],
      ["DELETE", `/sandboxes/${alice}/live/stop`],
      ["PATCH", `/sandboxes/${alice}/dev/restart`],
      ["POST", "/openapi.json"],
    ] as const) {
      cases.push({ why: "the wrong method", method, path, status: 405, code: "method_not_allowed" });
    }
    for (const role of ["live", "dev"]) {
      for (const action of ["start", "stop", "restart"]) {
        cases.push({
          why: "a well-formed user that does not exist",
          method: "POST",
          path: `/sandboxes/${ghost}/${role}/${action}`,
          status: 404,
          code: "not_found",
          mentions: new RegExp(ghost),
        });
      }
    }
    cases.push({
      why: "a filter on a user that does not exist",
      method: "GET",
      path: `/sandboxes?user=${ghost}`,
      status: 404,
      code: "not_found",
      mentions: new RegExp(ghost),
    });

    for (const c of cases) {
      const shown = c.path.length > 80 ? `${c.path.slice(0, 77)}...` : c.path;
      const size = c.body && c.body.length > 1024 ? ` (${Math.round(c.body.length / KIB)} KiB)` : "";
      it(`refuses ${c.method} ${shown}${size} (${c.why}) with ${[c.status].flat().join("/")}${c.code ? ` ${c.code}` : ""} and changes nothing`, async () => {
        const before = await snapshot(t);
        const res = c.bare
          ? await rawRequest({ socketPath: t.daemon.operatorSocket }, c.method, c.path, c.body)
          : c.ownConnection
            ? await rawRequest({ socketPath: t.daemon.operatorSocket }, c.method, c.path, c.body, { "content-type": "application/json", ...c.headers })
            : await t.operator.send(c.method, c.path, c.body, c.headers);
        assertJsonError(res, { status: c.status, code: c.code, mentions: c.mentions });
        assert.deepEqual(await snapshot(t), before, "state is unchanged: sandboxes, users, audit log, sandbox directories");
        assert.equal(t.daemon.services.users.hasUser(fresh), false, `no user ${fresh} was created`);
      });
    }

    it("refuses to create an existing user with 409 conflict, keeps the user as it was, and audits the refusal", async () => {
      const before = await snapshot(t);
      const res = await t.operator.post("/users", { name: alice });
      assertJsonError(res, { status: 409, code: "conflict", mentions: new RegExp(alice) });
      const after = await snapshot(t);
      assert.deepEqual({ ...after, auditRows: before.auditRows, lastAuditId: before.lastAuditId }, before, "users, sandboxes and slots are unchanged");
      const entries = auditSince(t, before.lastAuditId);
      assert.equal(entries.length, 1, `one audit entry for the failed action: ${JSON.stringify(entries)}`);
      assert.equal(entries[0]!.action, "user.create");
      assert.equal(entries[0]!.target, alice);
      assert.equal(entries[0]!.outcome, "error");
      assert.equal(entries[0]!.details?.code, "conflict");
    });

    it("answers a request for a running daemon after all of that: nothing was broken", async () => {
      const res = await t.operator.get("/status");
      assert.equal(res.status, 200);
      assert.equal(res.body.ready.database, true);
      assert.equal(res.body.ready.runtime, true);
      assert.equal(res.body.users, t.daemon.services.users.users().length);
    });
  });

  describe("the unix socket listener", () => {
    it("is a socket file with mode 0600", () => {
      const st = statSync(t.daemon.operatorSocket);
      assert.ok(st.isSocket(), `${t.daemon.operatorSocket} is a socket`);
      assert.equal((st.mode & 0o777).toString(8), "600");
    });

    it("publishes an OpenAPI document at GET /openapi.json that lists every route", async () => {
      const res = await t.operator.get("/openapi.json");
      assert.equal(res.status, 200);
      assert.match(String(res.headers["content-type"]), /^application\/json/);
      assert.equal(typeof res.body, "object", "valid JSON");
      assert.match(String(res.body.openapi), /^3\./);
      const paths = res.body.paths as Record<string, Record<string, { parameters?: { name: string; schema?: { enum?: string[] } }[] }>>;
      assert.ok(paths["/status"]?.get, "GET /status");
      assert.ok(paths["/sandboxes"]?.get, "GET /sandboxes");
      assert.ok(paths["/users"]?.post, "POST /users");
      const action = paths["/sandboxes/{user}/{role}/{action}"]?.post;
      assert.ok(action, `POST /sandboxes/{user}/{role}/{action}, got ${Object.keys(paths).join(", ")}`);
      const param = (name: string) => action.parameters?.find((p) => p.name === name);
      assert.deepEqual(param("role")?.schema?.enum, ["live", "dev"]);
      assert.deepEqual(param("action")?.schema?.enum, ["start", "stop", "restart"]);
      assert.ok(param("user"), "the user parameter is described");
      assert.ok(res.body.components?.schemas?.Error, "the error shape is described");
    });

    it("accepts a JSON body just under the 64 KiB limit", async () => {
      const name = testUser("api-big-ok");
      created.push(name);
      const res = await t.operator.send("POST", "/users", `{"name":"${name}"}${" ".repeat(60 * KIB)}`);
      assert.equal(res.status, 201, JSON.stringify(res.body));
      assert.equal(res.body.name, name);
    });

    it("drops no request of a keep-alive client after refusing its oversized body with 413", async () => {
      const name = testUser("api-keepalive");
      created.push(name);
      assert.equal((await t.operator.post("/users", { name })).status, 201);
      const target = { socketPath: t.daemon.operatorSocket };
      const agent = new Agent({ keepAlive: true, maxSockets: 1 });
      try {
        const tooLarge = await rawRequest(target, "POST", "/users", `{"name":"x"}${" ".repeat(100 * KIB)}`, { "content-type": "application/json" }, agent);
        assertJsonError(tooLarge, { status: 413, code: "payload_too_large" });
        // An operator script carries on over the same connection: start, stop, back to back.
        // The daemon must either announce the close with the 413 or keep the connection whole.
        const failures: string[] = [];
        const until = Date.now() + 1500;
        for (let i = 0; Date.now() < until; i++) {
          const action = i % 2 === 0 ? "start" : "stop";
          const res = await rawRequest(target, "POST", `/sandboxes/${name}/dev/${action}`, undefined, {}, agent).catch((e: Error) => e);
          if (res instanceof Error) failures.push(`${action} #${i}: ${res.message}`);
          else if (res.status !== 200) failures.push(`${action} #${i}: ${res.status} ${JSON.stringify(res.body)}`);
        }
        assert.deepEqual(failures, [], `requests after a 413 sent with "Connection: ${tooLarge.headers.connection}"`);
      } finally {
        agent.destroy();
      }
    });

    it("accepts application/json with a charset parameter", async () => {
      const name = testUser("api-charset");
      created.push(name);
      const res = await t.operator.send("POST", "/users", JSON.stringify({ name }), { "content-type": "application/json; charset=utf-8" });
      assert.equal(res.status, 201, JSON.stringify(res.body));
    });
  });

  describe("happy path: a user's sandboxes started, stopped and audited", () => {
    const bob = testUser("api-bob");
    let auditMark = 0;

    before(() => {
      auditMark = t.daemon.services.audit.list({ limit: 1 })[0]?.id ?? 0;
    });

    it("creates a user with live on slot a and dev on slot b, both not yet created", async () => {
      const usersBefore = (await t.operator.get("/status")).body.users as number;
      created.push(bob);
      const res = await t.operator.post("/users", { name: bob });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      assert.equal(res.body.name, bob);
      assert.equal(res.body.live, "a");
      assert.equal(res.body.dev, "b");
      assert.equal(typeof res.body.generation, "number");
      assert.equal((await t.operator.get("/status")).body.users, usersBefore + 1);
      const list = await t.operator.get<{ sandboxes: SandboxRow[] }>(`/sandboxes?user=${bob}`);
      assert.equal(list.status, 200);
      assert.deepEqual(
        list.body.sandboxes.map((s) => [s.user, s.role, s.slot, s.state]),
        [
          [bob, "live", "a", "not started"],
          [bob, "dev", "b", "not started"],
        ],
      );
    });

    it("starts live: the answer says running and the sandbox itself answers /health", async () => {
      const res = await t.operator.post<{ sandbox: SandboxRow }>(`/sandboxes/${bob}/live/start`);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      const s = res.body.sandbox;
      assert.equal(s.user, bob);
      assert.equal(s.role, "live");
      assert.equal(s.slot, "a");
      assert.equal(s.state, "running");
      assert.ok(s.endpoint, "a running sandbox has an endpoint");
      // As root, the sandbox's own address in its network namespace; otherwise a loopback port.
      assert.match(s.endpoint.host, process.getuid?.() === 0 ? /^10\.252\.\d+\.\d+$/ : /^127\.0\.0\.1$/);
      assert.equal((await getJson(`${baseUrl(s.endpoint)}/health`)).status, 200);
      const who = await getJson<{ user: string; slot: string }>(`${baseUrl(s.endpoint)}/whoami`);
      assert.equal(who.body.user, bob);
      assert.equal(who.body.slot, "a");
    });

    it("stops live: the answer says stopped and the old endpoint refuses connections", async () => {
      const running = (await t.operator.get<{ sandboxes: SandboxRow[] }>(`/sandboxes?user=${bob}`)).body.sandboxes.find((s) => s.role === "live")!;
      assert.equal(running.state, "running");
      const res = await t.operator.post<{ sandbox: SandboxRow }>(`/sandboxes/${bob}/live/stop`);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.body.sandbox.state, "stopped");
      assert.equal(res.body.sandbox.endpoint, null);
      assert.ok(await refused(`${baseUrl(running.endpoint!)}/health`), "the stopped sandbox no longer answers");
      const list = await t.operator.get<{ sandboxes: SandboxRow[] }>(`/sandboxes?user=${bob}`);
      assert.equal(list.body.sandboxes.find((s) => s.role === "live")?.state, "stopped");
    });

    it("stopping a stopped sandbox is a harmless 200", async () => {
      const res = await t.operator.post<{ sandbox: SandboxRow }>(`/sandboxes/${bob}/live/stop`);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.body.sandbox.state, "stopped");
    });

    it("runs live and dev side by side: two running sandboxes on different slots and endpoints", async () => {
      const live = await t.operator.post<{ sandbox: SandboxRow }>(`/sandboxes/${bob}/live/start`);
      assert.equal(live.status, 200, JSON.stringify(live.body));
      const dev = await t.operator.post<{ sandbox: SandboxRow }>(`/sandboxes/${bob}/dev/start`);
      assert.equal(dev.status, 200, JSON.stringify(dev.body));
      const list = await t.operator.get<{ sandboxes: SandboxRow[] }>(`/sandboxes?user=${bob}`);
      const rows = list.body.sandboxes;
      assert.deepEqual(
        rows.map((s) => [s.role, s.slot, s.state]),
        [
          ["live", "a", "running"],
          ["dev", "b", "running"],
        ],
      );
      // Different ports, or (each in a network namespace of its own) different addresses.
      assert.notEqual(baseUrl(rows[0]!.endpoint!), baseUrl(rows[1]!.endpoint!));
      for (const s of rows) {
        const who = await getJson<{ slot: string }>(`${baseUrl(s.endpoint!)}/whoami`);
        assert.equal(who.status, 200);
        assert.equal(who.body.slot, s.slot, `${s.role} answers from its own slot`);
      }
      const status = await t.operator.get("/status");
      assert.ok(status.body.sandboxes.running >= 2, `status counts both: ${JSON.stringify(status.body)}`);
    });

    it("restarts dev: a new process that is healthy again", async () => {
      const before = (await t.operator.get<{ sandboxes: SandboxRow[] }>(`/sandboxes?user=${bob}`)).body.sandboxes.find((s) => s.role === "dev")!;
      const res = await t.operator.post<{ sandbox: SandboxRow }>(`/sandboxes/${bob}/dev/restart`);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.body.sandbox.state, "running");
      assert.notDeepEqual(
        [res.body.sandbox.endpoint, res.body.sandbox.startedAt],
        [before.endpoint, before.startedAt],
        "a restart replaces the running process",
      );
      assert.equal((await getJson(`${baseUrl(res.body.sandbox.endpoint!)}/health`)).status, 200);
    });

    it("audits every one of those actions with who, what, from where and the outcome", () => {
      const entries = auditSince(t, auditMark).filter((e) => e.target === bob || e.target?.startsWith(`${bob}/`));
      assert.deepEqual(
        entries.map((e) => [e.action, e.target, e.outcome]),
        [
          ["user.create", bob, "ok"],
          ["sandbox.start", `${bob}/live`, "ok"],
          ["sandbox.stop", `${bob}/live`, "ok"],
          ["sandbox.stop", `${bob}/live`, "ok"],
          ["sandbox.start", `${bob}/live`, "ok"],
          ["sandbox.start", `${bob}/dev`, "ok"],
          ["sandbox.restart", `${bob}/dev`, "ok"],
        ],
      );
      for (const e of entries) {
        assert.equal(e.actor, "operator:unix");
        assert.equal(e.source, "unix-socket");
        assert.equal(typeof e.at, "number");
        assert.ok(Math.abs(Date.now() - e.at) < 5 * 60_000, "when: a current timestamp");
        assert.ok(typeof e.durationMs === "number" && e.durationMs >= 0);
      }
    });
  });
});

describe("operator API: a failed action is audited with its error", () => {
  let t: TestDaemon;
  const first = testUser("api-cap-1");
  const second = testUser("api-cap-2");

  before(async () => {
    t = await bootDaemon({ env: { HYPERVISOR_MAX_SANDBOXES: "1" } });
  });
  after(async () => {
    await stopAll(t, [first, second]);
    await t?.close();
  });

  it("records a start refused for capacity as an error with its code, and the operator sees 503 capacity_exhausted", async () => {
    for (const name of [first, second]) assert.equal((await t.operator.post("/users", { name })).status, 201);
    assert.equal((await t.operator.post(`/sandboxes/${first}/live/start`)).status, 200);
    const mark = t.daemon.services.audit.list({ limit: 1 })[0]!.id;
    const res = await t.operator.post(`/sandboxes/${second}/live/start`);
    assert.equal(res.status, 503, JSON.stringify(res.body));
    assert.equal(res.body.error.code, "capacity_exhausted");
    assert.equal(typeof res.body.error.requestId, "string");
    const entries = auditSince(t, mark);
    assert.deepEqual(
      entries.map((e) => [e.action, e.target, e.outcome, e.details?.code]),
      [["sandbox.start", `${second}/live`, "error", "capacity_exhausted"]],
    );
    assert.equal(entries[0]!.actor, "operator:unix");
    const rows = (await t.operator.get<{ sandboxes: SandboxRow[] }>(`/sandboxes?user=${second}`)).body.sandboxes;
    assert.ok(
      rows.every((s) => s.state !== "running"),
      "nothing was started for the refused user",
    );
  });
});

describe("operator API over TCP with a bearer token", () => {
  let t: TestDaemon;
  let tcp: { host: string; port: number };
  let secrets: { path: string; remove(): void } | undefined;
  const token = randomBytes(16).toString("hex"); // 32 characters
  const carol = testUser("api-tcp-carol");
  const mallory = testUser("api-tcp-mallory");

  before(async () => {
    secrets = tempDir("hv-token-");
    const tokenFile = join(secrets.path, "operator-token");
    writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
    t = await bootDaemon({ env: { HYPERVISOR_OPERATOR_LISTEN: "127.0.0.1:0", HYPERVISOR_OPERATOR_TOKEN_FILE: tokenFile } });
    assert.ok(t.daemon.operatorAddress, "the daemon exposes the TCP operator address");
    tcp = { host: "127.0.0.1", port: t.daemon.operatorAddress.port };
  });
  after(async () => {
    await stopAll(t, [carol, mallory]);
    await t?.close();
    secrets?.remove();
  });

  it("listens on loopback only, as configured", () => {
    assert.equal(t.daemon.operatorAddress?.address, "127.0.0.1");
    assert.ok(t.daemon.operatorAddress!.port > 0);
  });

  const wrong: [string, Record<string, string>][] = [
    ["no Authorization header", {}],
    ["an empty bearer", { authorization: "Bearer " }],
    ["a wrong token of the same length", { authorization: `Bearer ${"0".repeat(32)}` }],
    ["a prefix of the token", { authorization: `Bearer ${token.slice(0, 31)}` }],
    ["the token with a suffix", { authorization: `Bearer ${token}x` }],
    ["the token as Basic credentials", { authorization: `Basic ${Buffer.from(`operator:${token}`).toString("base64")}` }],
    ["the token without a scheme", { authorization: token }],
    ["the token in another header", { "x-operator-token": token }],
  ];
  for (const [why, headers] of wrong) {
    it(`refuses ${why} with 401 unauthorized JSON`, async () => {
      const client = new OperatorClient(tcp);
      for (const [method, path] of [
        ["GET", "/status"],
        ["GET", "/sandboxes"],
        ["GET", "/openapi.json"],
        ["GET", "/no-such-route"],
      ] as const) {
        const res = await client.send(method, path, undefined, headers);
        assertJsonError(res, { status: 401, code: "unauthorized" });
      }
    });
  }

  it("refuses a state-changing call with a wrong token before acting on it", async () => {
    const before = await snapshot(t);
    const bad = new OperatorClient({ ...tcp, token: "f".repeat(32) });
    assertJsonError(await bad.post("/users", { name: mallory }), { status: 401, code: "unauthorized" });
    assertJsonError(await bad.send("POST", "/users", `{"name":"${mallory}"}${" ".repeat(100 * KIB)}`), { status: [401, 413] });
    assert.deepEqual(await snapshot(t), before, "nothing changed");
    assert.equal(t.daemon.services.users.hasUser(mallory), false);
  });

  it("accepts the right token, acts, and audits the action as the token holder from its address", async () => {
    const client = new OperatorClient({ ...tcp, token });
    const status = await client.get("/status");
    assert.equal(status.status, 200, JSON.stringify(status.body));
    assert.equal(status.body.runtime, "process");
    const mark = t.daemon.services.audit.list({ limit: 1 })[0]?.id ?? 0;
    const res = await client.post("/users", { name: carol });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    const started = await client.post<{ sandbox: SandboxRow }>(`/sandboxes/${carol}/live/start`);
    assert.equal(started.status, 200, JSON.stringify(started.body));
    assert.equal(started.body.sandbox.state, "running");
    const entries = auditSince(t, mark);
    assert.deepEqual(
      entries.map((e) => [e.action, e.target, e.outcome, e.actor]),
      [
        ["user.create", carol, "ok", "operator:token"],
        ["sandbox.start", `${carol}/live`, "ok", "operator:token"],
      ],
    );
    for (const e of entries) assert.match(String(e.source), /^(::ffff:)?127\.0\.0\.1$/, "from where: the client address");
    const json = JSON.stringify(t.daemon.services.audit.list({ limit: 1_000_000 }));
    assert.ok(!json.includes(token), "the token never lands in the audit log");
  });

  it("answers bad input over TCP with the same JSON error shape once authenticated", async () => {
    const client = new OperatorClient({ ...tcp, token });
    assertJsonError(await client.post("/sandboxes/Alice/live/start"), { status: 400, code: "validation_failed" });
    assertJsonError(await client.send("POST", "/users", '{"name":'), { status: 400, code: "bad_request" });
    assertJsonError(await client.get("/nope"), { status: 404, code: "not_found" });
  });

  it("keeps the unix socket usable without a token next to the TCP listener", async () => {
    const res = await t.operator.get("/status");
    assert.equal(res.status, 200);
  });
});

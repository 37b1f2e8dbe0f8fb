import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import type { Hono } from "hono";
import { MAX_AUTH_BODY_BYTES } from "../../hypervisor/auth/auth-routes.js";
import { errorStatus, type ErrorCode } from "../../hypervisor/errors.js";
import { createOperatorApp } from "../../hypervisor/operator/operator-app.js";
import { MAX_BODY_BYTES } from "../../hypervisor/operator/schemas.js";
import { createPublicApp } from "../../hypervisor/public-app.js";
import { FakeRuntime } from "../../hypervisor/runtime/fake-runtime.js";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { testUser } from "../helpers/run-id.js";

/**
 * Every `/auth/*` route and every operator route, fed random and boundary bodies, headers,
 * paths and queries through `app.request()` on the daemon's own Hono apps (fake runtime, so a
 * request that happens to be valid starts nothing real). Whatever comes in: never a 5xx, never
 * a stack trace, every error in the one shape, and a refused request changes no state.
 */

const ORIGIN = "http://localhost:8080";
const STACK_TRACE = /\n\s+at\s|\s{4}at\s|node_modules|\.[cm]?[jt]s:\d+:\d+/;
/** Cases per route and method; the total is reported as a test diagnostic. */
const RUNS_PER_ROUTE = 150;
const RUNS_OF_ANY_PATH = 300;

// --- arbitraries ------------------------------------------------------------------------------

const printable = (max: number) => fc.stringMatching(new RegExp(`^[\\x20-\\x7e]{0,${max}}$`));
const b64url = fc.oneof(fc.stringMatching(/^[A-Za-z0-9_-]{0,120}$/), fc.constantFrom("", "A", "A".repeat(1365), "====", "+/+/"));
const text = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: "grapheme", maxLength: 20 }),
  fc.constantFrom(
    "",
    " ",
    "\u0000",
    "\ud800",
    "x".repeat(64),
    "x".repeat(65),
    "x".repeat(4097),
    "<script>alert(1)</script>",
    "'; DROP TABLE users; --",
    "__proto__",
  ),
);
const userName = fc.oneof(
  fc.stringMatching(/^[a-z0-9][a-z0-9-]{0,30}[a-z0-9]$/),
  fc.constantFrom("", "a", "a".repeat(32), "a".repeat(33), "-a", "a-", "A", "ä", "a b", "../x", "%2e%2e", "null", "0", "nobody"),
  text,
);
const number = fc.oneof(fc.constantFrom(0, -1, 1, 1.5, 2 ** 31, 2 ** 53, -(2 ** 53), 1e308, -0), fc.integer(), fc.double({ noNaN: true }));
const scalar = fc.oneof(text, number, fc.boolean(), fc.constant(null));
const anything = fc.oneof(scalar, fc.jsonValue({ maxDepth: 3 }), fc.array(scalar, { maxLength: 5 }));
const clientDataJSON = fc
  .record(
    {
      type: fc.oneof(fc.constantFrom("webauthn.get", "webauthn.create"), text),
      challenge: fc.oneof(b64url, scalar),
      origin: fc.oneof(fc.constantFrom(ORIGIN, "http://evil.example"), text),
    },
    { requiredKeys: [] },
  )
  .map((o) => Buffer.from(JSON.stringify(o)).toString("base64url"));
const credential = fc.oneof(
  fc.record(
    {
      id: b64url,
      rawId: b64url,
      type: fc.oneof(fc.constant("public-key"), text),
      response: fc.oneof(
        fc.record(
          {
            clientDataJSON: fc.oneof(clientDataJSON, b64url, scalar),
            attestationObject: fc.oneof(b64url, scalar),
            authenticatorData: fc.oneof(b64url, scalar),
            signature: fc.oneof(b64url, scalar),
            userHandle: fc.oneof(b64url, scalar),
            transports: fc.oneof(fc.array(text, { maxLength: 12 }), scalar),
          },
          { requiredKeys: [] },
        ),
        anything,
      ),
      authenticatorAttachment: fc.oneof(fc.constantFrom("platform", "cross-platform"), text),
      clientExtensionResults: fc.oneof(fc.object({ maxDepth: 1 }), scalar),
    },
    { requiredKeys: [] },
  ),
  anything,
);
/** The members some route reads, each with values near and far from what it accepts, plus strangers. */
const knownMembers = fc.record(
  {
    username: userName,
    name: fc.oneof(userName, text),
    invite: fc.oneof(b64url, text),
    code: fc.oneof(fc.stringMatching(/^[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}$/), text),
    credential,
    generation: fc.oneof(fc.integer({ min: -2, max: 5 }), number, text),
    users: fc.oneof(fc.array(userName, { maxLength: 4 }), scalar),
    force: fc.oneof(fc.boolean(), scalar),
    to: fc.oneof(fc.integer({ min: -1, max: 5 }), scalar),
    image: fc.oneof(fc.constantFrom("localhost/x:1", ""), text),
    command: fc.oneof(fc.array(text, { maxLength: 3 }), scalar),
    version: fc.oneof(printable(70), scalar),
    expiresInHours: fc.oneof(fc.integer({ min: -1, max: 10_000 }), number, text),
  },
  { requiredKeys: [] },
);
const jsonBody = fc.oneof(
  knownMembers,
  fc.tuple(knownMembers, fc.dictionary(text, anything, { maxKeys: 3 })).map(([known, extra]) => ({ ...extra, ...known })),
  anything,
);
/** What goes on the wire: JSON of the above, or text that is not JSON, or a body at a size limit. */
const rawBody = fc.oneof(
  { weight: 6, arbitrary: jsonBody.map((v) => JSON.stringify(v) ?? "null") },
  { weight: 1, arbitrary: fc.oneof(text, fc.constantFrom("{", '{"username":', "[1,2", "\u0000", "{}{}", "\ufeff{}", "NaN")) },
  {
    weight: 1,
    arbitrary: fc
      .constantFrom(MAX_AUTH_BODY_BYTES, MAX_AUTH_BODY_BYTES + 1, MAX_BODY_BYTES, MAX_BODY_BYTES + 1)
      .map((size) => `{"username":"a"${" ".repeat(size - 16)}}`),
  },
  { weight: 1, arbitrary: fc.constant(undefined) },
);
/** Mostly right, so that most cases get past the checks of the envelope to those of the body. */
const contentType = fc.oneof(
  { weight: 6, arbitrary: fc.constant("application/json") },
  fc.constantFrom(
    undefined,
    "application/json; charset=utf-8",
    "Application/JSON",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "",
  ),
);
const method = (usual: string) => fc.oneof({ weight: 5, arbitrary: fc.constant(usual) }, fc.constantFrom("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"));
/** encodeURIComponent, which throws on a lone surrogate: that one becomes its WTF-8 escape. */
const encode = (value: string) => {
  try {
    return encodeURIComponent(value);
  } catch {
    return "%ED%A0%80";
  }
};
/** A path segment: plausible values, encoded garbage, and the dot segments and escapes that tricks use. */
const segment = (plausible: fc.Arbitrary<string>) =>
  fc.oneof(
    { weight: 3, arbitrary: plausible.map(encode) },
    { weight: 1, arbitrary: text.map(encode) },
    { weight: 1, arbitrary: fc.constantFrom("", ".", "..", "%2e%2e", "%2F", "%2f..", "%00", "%zz", "%C0%AE", "a/b", "~", "%20") },
  );
const query = fc
  .array(
    fc.tuple(
      fc.oneof(fc.constantFrom("limit", "before", "user", "tail", "follow", "purge", "next"), printable(10)),
      fc.oneof(printable(20), number.map(String)),
    ),
    { maxLength: 3 },
  )
  .map((pairs) => (pairs.length ? `?${pairs.map(([k, v]) => `${encode(k)}=${encode(v)}`).join("&")}` : ""));
const peer = fc.oneof(fc.ipV4(), fc.ipV6(), fc.constant("127.0.0.1"));

// --- what must hold of every answer -----------------------------------------------------------

interface Case {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: string | undefined;
  peer: string;
}

function assertAnswer(c: Case, status: number, contentTypeOf: string | null, text: string, requestIdHeader: string | null): void {
  const what = `${c.method} ${c.path.slice(0, 200)} → ${status}: ${text.slice(0, 300)}`;
  assert.ok(status < 500, `never a 5xx: ${what}`);
  // A database backup (POST /backup) is the one binary answer: its bytes are data, not a message.
  if (!/^application\/vnd\.sqlite3/.test(String(contentTypeOf))) assert.doesNotMatch(text, STACK_TRACE, `no stack trace: ${what}`);
  if (status < 400) return;
  assert.match(String(contentTypeOf), /^application\/json/, `a JSON error: ${what}`);
  const body = JSON.parse(text) as { error?: { code?: unknown; message?: unknown; requestId?: unknown } };
  assert.deepEqual(Object.keys(body), ["error"], `only the error member: ${what}`);
  const e = body.error!;
  assert.ok(typeof e.code === "string" && e.code in errorStatus, `a known code: ${what}`);
  assert.equal(errorStatus[e.code as ErrorCode], status, `the status is the code's: ${what}`);
  assert.ok(typeof e.message === "string" && e.message.length > 0, `a message: ${what}`);
  assert.ok(typeof e.requestId === "string" && e.requestId.length > 0, `a request id: ${what}`);
  assert.equal(e.requestId, requestIdHeader, `the request id is X-Request-Id's: ${what}`);
}

/** Values for the path parameters the routes name, near and far from what each accepts. */
const PARAMETERS: Record<string, fc.Arbitrary<string>> = {
  user: userName,
  role: fc.oneof(fc.constantFrom("live", "dev"), text),
  action: fc.oneof(fc.constantFrom("start", "stop", "restart"), text),
  state: fc.oneof(fc.constantFrom("known-good", "bad", "candidate"), text),
  id: fc.oneof(fc.integer({ min: 0, max: 6 }).map(String), fc.constantFrom("-1", "1.5", "0x1", "1e3", "999999999999999999999"), b64url),
};

/** A path of Hono's (`:id`) or OpenAPI's (`{id}`) template, each parameter a segment of its kind. */
function pathOf(template: string): fc.Arbitrary<string> {
  const parts = template.split(/(:[A-Za-z]+|\{[A-Za-z]+\})/);
  return fc
    .tuple(...parts.map((part, i) => (i % 2 === 0 ? fc.constant(part) : segment(PARAMETERS[part.replace(/[:{}]/g, "")] ?? text))))
    .map((p) => p.join(""));
}

describe("fuzzing the HTTP APIs", () => {
  let t: TestDaemon;
  let secrets: { path: string; remove(): void };
  let publicApp: Hono;
  let unixApp: Hono;
  let tcpApp: Hono;
  const token = randomBytes(16).toString("hex");
  const cookies: string[] = [];
  let cases = 0;
  /** Answers by status, to show in the diagnostics how deep the cases got. */
  let statuses = new Map<number, number>();
  const tally = () => {
    const shown = [...statuses].sort(([a], [b]) => a - b).map(([status, n]) => `${status}×${n}`);
    statuses = new Map();
    return shown.join(" ");
  };

  before(async () => {
    secrets = tempDir("hv-token-");
    const tokenFile = join(secrets.path, "operator-token");
    writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
    t = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN, HYPERVISOR_OPERATOR_TOKEN_FILE: tokenFile }, runtime: new FakeRuntime() });
    publicApp = createPublicApp(t.daemon.services) as unknown as Hono;
    unixApp = createOperatorApp(t.daemon.services, "unix") as unknown as Hono;
    tcpApp = createOperatorApp(t.daemon.services, "tcp") as unknown as Hono;
    // Signed-in callers too, so the routes behind a session are reached.
    const owner = testUser("fuzz");
    const browser = new PublicClient(t.publicUrl, ORIGIN);
    assert.equal((await browser.register(owner, new SoftwareAuthenticator(ORIGIN))).status, 201);
    cookies.push(`hv_session=${browser.cookie}`);
    for (const scope of ["full", "full", "recovery"] as const) cookies.push(`hv_session=${t.daemon.services.sessions.create(owner, scope).token}`);
  });
  after(async () => {
    await t.close();
    secrets.remove();
  });

  /** State a refusal must leave alone: every table that a request could add to, and successful actions. */
  const state = () => {
    const count = (sql: string) => (t.daemon.services.db.prepare(sql).get() as { n: unknown }).n;
    return {
      users: count("SELECT count(*) AS n FROM users"),
      routes: count("SELECT count(*) || ':' || sum(version) AS n FROM routes"),
      sandboxes: count("SELECT count(*) || ':' || sum(generation_id) AS n FROM sandboxes"),
      generations: count("SELECT count(*) || ':' || group_concat(state) AS n FROM generations"),
      accounts: count("SELECT count(*) AS n FROM accounts"),
      passkeys: count("SELECT count(*) AS n FROM passkeys"),
      recoveryCodes: count("SELECT count(*) || ':' || count(used_at) AS n FROM recovery_codes"),
      sessions: count("SELECT count(*) AS n FROM sessions"),
      invites: count("SELECT count(*) || ':' || count(used_at) AS n FROM invites"),
      // Refusals are audited themselves (outcome refused, or error for a failed action); nothing may succeed.
      auditOk: count("SELECT count(*) AS n FROM audit WHERE outcome = 'ok'"),
    };
  };

  async function run(app: Hono, c: Case): Promise<void> {
    cases += 1;
    const before = state();
    const init: RequestInit = { method: c.method, headers: c.headers };
    if (c.body !== undefined && c.method !== "GET") init.body = c.body;
    const res = await app.request(c.path, init, { incoming: { socket: { remoteAddress: c.peer } } });
    const text = await res.text();
    statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
    assertAnswer(c, res.status, res.headers.get("content-type"), text, res.headers.get("x-request-id"));
    if (res.status >= 400) assert.deepEqual(state(), before, `a refusal changes nothing: ${c.method} ${c.path} → ${res.status} ${text.slice(0, 200)}`);
  }

  const headers = (extra: fc.Arbitrary<Record<string, string | undefined>>) =>
    fc.tuple(contentType, extra).map(([type, more]) => {
      const all: Record<string, string> = {};
      for (const [name, value] of Object.entries({ "content-type": type, ...more })) if (value !== undefined) all[name] = value;
      return all;
    });

  it("answers every /auth/* route in the one shape, whatever it is sent", async (ctx) => {
    const first = cases;
    const routes = [
      ...new Map(publicApp.routes.filter((r) => r.path.startsWith("/auth/") && r.method !== "ALL").map((r) => [`${r.method} ${r.path}`, r])).values(),
    ];
    assert.ok(routes.length >= 12, `found the /auth routes: ${routes.map((r) => `${r.method} ${r.path}`).join(", ")}`);
    const authHeaders = headers(
      fc.record(
        {
          origin: fc.oneof(
            { weight: 8, arbitrary: fc.constant(ORIGIN) },
            fc.constantFrom(undefined, "null", "http://evil.example", `${ORIGIN}/`, "HTTP://LOCALHOST:8080"),
          ),
          cookie: fc.oneof(
            { weight: 3, arbitrary: fc.constantFrom(...cookies) },
            printable(60).map((v) => `hv_session=${v}`),
            fc.constant(`${cookies[0]}; ${cookies[1]}`),
            fc.constant(undefined),
          ),
          "x-forwarded-for": fc.oneof(fc.ipV4(), printable(40), fc.constant(undefined)),
        },
        { requiredKeys: [] },
      ),
    );
    for (const route of routes) {
      await fc.assert(
        fc.asyncProperty(method(route.method), pathOf(route.path), query, authHeaders, rawBody, peer, async (m, path, q, h, body, address) =>
          run(publicApp, { method: m, path: `${path}${q}`, headers: h, body, peer: address }),
        ),
        { numRuns: RUNS_PER_ROUTE },
      );
    }
    ctx.diagnostic(`${cases - first} cases over ${routes.length} routes: ${tally()}`);
  });

  it("answers every operator route in the one shape, over the socket and over TCP with any token", async (ctx) => {
    const first = cases;
    const doc = (await (await unixApp.request("/openapi.json")).json()) as { paths: Record<string, Record<string, unknown>> };
    const routes = Object.entries(doc.paths).flatMap(([path, methods]) => Object.keys(methods).map((m) => ({ method: m.toUpperCase(), path })));
    assert.ok(routes.length >= 12, `found the operator routes: ${routes.map((r) => `${r.method} ${r.path}`).join(", ")}`);
    const operatorHeaders = headers(
      fc.record(
        {
          authorization: fc.oneof(
            { weight: 4, arbitrary: fc.constant(`Bearer ${token}`) },
            printable(60),
            printable(40).map((v) => `Bearer ${v}`),
            fc.constant(undefined),
          ),
          accept: fc.constantFrom(undefined, "application/json", "application/x-ndjson", "*/*"),
        },
        { requiredKeys: [] },
      ),
    );
    for (const route of routes) {
      await fc.assert(
        fc.asyncProperty(
          fc.boolean(),
          method(route.method),
          pathOf(route.path),
          query,
          operatorHeaders,
          rawBody,
          peer,
          async (overTcp, m, path, q, h, body, address) => run(overTcp ? tcpApp : unixApp, { method: m, path: `${path}${q}`, headers: h, body, peer: address }),
        ),
        { numRuns: RUNS_PER_ROUTE },
      );
    }
    ctx.diagnostic(`${cases - first} cases over ${routes.length} routes: ${tally()}`);
  });

  it("answers random paths, mostly no route at all, in the one shape too", async (ctx) => {
    const first = cases;
    const anyPath = fc
      .array(segment(fc.constantFrom("auth", "login", "options", "verify", "passkeys", "users", "sandboxes", "generations", "swap", "openapi.json")), {
        maxLength: 5,
      })
      .map((parts) => `/${parts.join("/")}`);
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom("public", "unix", "tcp"),
        method("POST"),
        anyPath,
        query,
        headers(fc.constant({ origin: ORIGIN })),
        rawBody,
        peer,
        async (which, m, path, q, h, body, address) => {
          const app = which === "public" ? publicApp : which === "unix" ? unixApp : tcpApp;
          // The public app also serves pages and assets (HTML); only its /auth/* answers are JSON.
          if (which === "public" && !path.startsWith("/auth/")) path = `/auth${path}`;
          await run(app, { method: m, path: `${path}${q}`, headers: h, body, peer: address });
        },
      ),
      { numRuns: RUNS_OF_ANY_PATH },
    );
    ctx.diagnostic(`${cases - first} cases: ${tally()}; ${cases} in all`);
  });
});

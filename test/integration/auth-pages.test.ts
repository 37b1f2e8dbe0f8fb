import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { safeNextPath } from "../../hypervisor/auth/request-context.js";
import type { ProcessRuntime } from "../../hypervisor/runtime/process/process-runtime.js";
import { SoftwareAuthenticator, type PublicResponse } from "../helpers/authenticator.js";
import { repoRoot } from "../helpers/paths.js";
import { daemonForSuite, ORIGIN } from "../helpers/public-daemon.js";
import { testUser } from "../helpers/run-id.js";

function assertSecurityHeaders(res: PublicResponse, what: string) {
  const csp = String(res.headers["content-security-policy"]);
  assert.match(csp, /script-src 'self'(;|$)/, `${what}: scripts only from our origin, none inline`);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, what);
  assert.match(csp, /frame-ancestors 'none'/, what);
  assert.match(csp, /default-src 'none'/, what);
  assert.equal(res.headers["x-frame-options"], "DENY", what);
  assert.equal(res.headers["referrer-policy"], "same-origin", what);
  assert.equal(res.headers["x-content-type-options"], "nosniff", what);
}

describe("sign-in pages", () => {
  const { t, client } = daemonForSuite();

  it("serves /login, /register and /recovery as HTML with the security headers and the ids the browser tests use", async () => {
    const ids: Record<string, string[]> = {
      "/login": ["username", "login", "status"],
      "/register": ["username", "register", "recovery-codes", "continue", "status"],
      "/recovery": ["username", "code", "recover", "add-passkey", "status"],
    };
    for (const [path, expected] of Object.entries(ids)) {
      const res = await client().get(path);
      assert.equal(res.status, 200, path);
      assert.match(String(res.headers["content-type"]), /^text\/html/);
      assert.equal(res.headers["cache-control"], "no-store");
      assertSecurityHeaders(res, path);
      assert.match(res.text, /^<!doctype html>/);
      assert.match(res.text, /<html lang="en">/);
      assert.doesNotMatch(res.text, /<script>|<style>|\son\w+=/, `${path}: no inline script, style or handlers`);
      for (const id of expected) assert.match(res.text, new RegExp(`id="${id}"`), `${path} has #${id}`);
      for (const label of res.text.matchAll(/<input id="([^"]+)"/g))
        assert.match(res.text, new RegExp(`<label for="${label[1]}"`), `${path}: #${label[1]} is labelled`);
    }
  });

  it("serves the script and stylesheet from /_hv/assets with revalidation", async () => {
    const js = await client().get("/_hv/assets/auth.js");
    assert.equal(js.status, 200);
    assert.match(String(js.headers["content-type"]), /^text\/javascript/);
    assert.match(js.text, /navigator\.credentials\.create/);
    assert.match(js.text, /navigator\.credentials\.get/);
    assertSecurityHeaders(js, "auth.js");
    const etag = String(js.headers.etag);
    assert.equal((await client().get("/_hv/assets/auth.js", { "if-none-match": etag })).status, 304);
    assert.equal((await client().get("/_hv/assets/auth.css")).status, 200);
    assert.equal((await client().get("/_hv/assets/nope.js")).status, 404);
  });

  it("serves the script compiled from hypervisor/pages/browser/auth.ts, byte for byte", async () => {
    const compiled = readFileSync(`${repoRoot}dist/hypervisor/pages/browser/auth.js`, "utf8");
    const js = await client().get("/_hv/assets/auth.js");
    assert.equal(js.text, compiled, "the served bytes are the type-checked build output");
    // A classic script under script-src 'self': no module syntax, no source map for the browser to fetch.
    assert.doesNotMatch(compiled, /^\s*(import|export)\b/m);
    assert.doesNotMatch(compiled, /sourceMappingURL/);
  });

  it("carries only same-origin paths as `next`, escaped", async () => {
    const page = await client().get(`/login?next=${encodeURIComponent("/dev/app?x=1")}`);
    assert.match(page.text, /data-next="\/dev\/app\?x=1"/);
    for (const evil of ["https://evil.example/", "//evil.example", "/\\evil.example", "javascript:alert(1)", "/%0d%0aX: y", "\\\\evil"]) {
      const res = await client().get(`/login?next=${encodeURIComponent(evil)}`);
      const next = /data-next="([^"]*)"/.exec(res.text)?.[1];
      assert.ok(next === "/" || (next!.startsWith("/") && !next!.startsWith("//")), `${evil} → ${next}`);
    }
    const xss = await client().get(`/login?next=${encodeURIComponent('/"><script>alert(1)</script>')}`);
    assert.doesNotMatch(xss.text, /<script>alert/);
    assert.equal(safeNextPath("//evil.example/x"), "/");
    assert.equal(safeNextPath("/\\evil.example"), "/");
    assert.equal(safeNextPath("https://evil.example"), "/");
    assert.equal(safeNextPath("/a/../b?c#d"), "/b?c#d");
    assert.equal(safeNextPath(undefined), "/");
  });

  it("sends nobody to another origin through dot segments in `next`", async () => {
    // Resolving `.` and `..` turns these into `//host` (a network-path reference, RFC 3986 §4.2).
    for (const evil of ["/.//evil.localhost:18090/phish", "/..//evil.example/x", "/%2e//evil.example"]) {
      const login = await client().get(`/login?next=${encodeURIComponent(evil)}`);
      assert.match(login.text, /data-next="\/"/, `/login with ${evil}`);
      const register = await client().get(`/register?next=${encodeURIComponent(evil)}`);
      assert.match(register.text, /<a id="continue" class="button" href="\/">/, `/register's Continue with ${evil}`);
      assert.doesNotMatch(register.text, /(href|data-next)="\/\//, `/register with ${evil}`);
    }
  });

  it("redirects /_hv/account to /login without a full session", async () => {
    const res = await client().get("/_hv/account");
    assert.equal(res.status, 303);
    assert.equal(res.headers.location, "/login?next=%2F_hv%2Faccount");
  });

  it("shows the account: passkeys, recovery codes left, live and dev with state and generation, sign-out", async () => {
    const user = testUser("page");
    const b = client();
    assert.equal((await b.register(user, new SoftwareAuthenticator(ORIGIN))).status, 201);
    const res = await b.get("/_hv/account");
    assert.equal(res.status, 200);
    assertSecurityHeaders(res, "account");
    for (const id of ["passkeys", "add-passkey", "logout", "regenerate", "recovery-codes"]) assert.match(res.text, new RegExp(`id="${id}"`), `#${id}`);
    assert.match(res.text, new RegExp(`Signed in as <strong id="menu-user">${user}</strong>`), "the user menu names the user");
    assert.match(res.text, /class="passkey-name">Passkey, \d{1,2} [A-Z][a-z]{2} \d{4}</);
    assert.match(res.text, /10 of 10 unused/);
    assert.match(res.text, /href="\/"/);
    assert.match(res.text, /href="\/dev\/"/);
    const generation = (await t().daemon.services.sandboxStatus.status([user]))[0]!.generation;
    assert.match(res.text, new RegExp(`#${generation}`));
    assert.match(res.text, /id="live-state">not started</, "a sandbox never started says so");
    assert.doesNotMatch(res.text, /data-remove=/, "the only passkey has no remove button");
  });

  it("shows a frozen sandbox as frozen, its stop button enabled and its health explained", async () => {
    const user = testUser("frozen-page");
    const b = client();
    assert.equal((await b.register(user, new SoftwareAuthenticator(ORIGIN))).status, 201);
    assert.equal((await b.get("/whoami")).status, 200, "the live sandbox started");
    const { runtime } = t().daemon.services;
    try {
      await (runtime as ProcessRuntime).freeze(user, "a");
      const res = await b.get("/_hv/account");
      assert.match(res.text, /id="live-state">frozen</);
      assert.match(res.text, /id="live-health">frozen while idle: your next request wakes it/);
      assert.match(res.text, /data-action="stop" >Stop live/, "a frozen sandbox can be stopped");
      assert.match(res.text, /data-action="restart" >Restart live/, "and restarted");
      assert.match(res.text, /data-action="start" disabled>Start live/);
    } finally {
      await t().operator.post(`/sandboxes/${user}/live/stop`);
    }
  });

  it("tells a user disabled while signed in why the sign-in page is back, and no one else", async () => {
    const user = testUser("disabled-page");
    const b = client();
    assert.equal((await b.register(user, new SoftwareAuthenticator(ORIGIN))).status, 201);
    assert.doesNotMatch((await b.get("/login")).text, /id="signed-out-why"/, "signed in and enabled: nothing to tell");
    assert.equal((await t().operator.post(`/users/${user}/disable`)).status, 200);
    try {
      const account = await b.get("/_hv/account");
      assert.equal(account.status, 303);
      const page = await b.get(String(account.headers.location));
      assert.match(page.text, /id="signed-out-why"[^>]*>You were signed out because the operator of this hypervisor disabled your account/);
      assert.doesNotMatch((await client().get("/login")).text, /id="signed-out-why"/, "a browser without that cookie is told nothing");
    } finally {
      await t().operator.post(`/users/${user}/enable`);
    }
  });

  it("answers a logout with a junk body and no session with 200 and a cleared cookie", async () => {
    const res = await client().send("POST", "/auth/logout", "{junk", { "content-type": "application/json" });
    assert.equal(res.status, 200);
    assert.equal(res.body.signedOut, false);
    assert.match(String(res.headers["set-cookie"]), /hv_session=; Path=\/; Max-Age=0/);
  });
});

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { testUser } from "../helpers/run-id.js";

const ORIGIN = "http://localhost:8080";
const HTML = { accept: "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8" };

/** A generation that runs but never answers /health: it starts, and then fails to become healthy. */
const NEVER_HEALTHY = { command: [process.execPath, "-e", "setInterval(() => {}, 1000)"], version: "never-healthy" };

describe("pages for browsers and the account's sandbox routes", () => {
  let t: TestDaemon;
  const alice = testUser("pages-a");
  const bob = testUser("pages-b");
  const clients = new Map<string, PublicClient>();
  const keys = new Map<string, SoftwareAuthenticator>();
  const as = (user: string) => clients.get(user)!;

  before(async () => {
    t = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN, HYPERVISOR_START_TIMEOUT_MS: "4000" } });
    for (const user of [alice, bob]) {
      const c = new PublicClient(t.publicUrl, ORIGIN);
      const key = new SoftwareAuthenticator(ORIGIN);
      assert.equal((await c.register(user, key)).status, 201);
      clients.set(user, c);
      keys.set(user, key);
    }
  });
  after(async () => {
    for (const user of [alice, bob]) for (const role of ["live", "dev"] as const) await t.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t?.close();
  });

  it("answers a browser's refusal with a readable page and an API client's with the JSON error", async () => {
    for (const path of ["/_hv/no-such-page", "/a/%2e%2e%2f/b"]) {
      const page = await as(alice).get(path, HTML);
      assert.ok(page.status === 404 || page.status === 400, `${path}: ${page.status}`);
      assert.match(String(page.headers["content-type"]), /^text\/html/, path);
      assert.match(page.text, /<h1>/);
      assert.match(page.text, /href="(http:\/\/localhost:8080)?\/_hv\/account"/, "a way back to the account page");
      assert.doesNotMatch(page.text, /id="retry"/, "no 'Try again' where the same request is refused again");
      const requestId = /<code id="request-id">([^<]+)<\/code>/.exec(page.text)?.[1];
      assert.ok(requestId && requestId !== "-", "the request id is shown");
      assert.match(String(page.headers["content-security-policy"]), /script-src 'self'/);

      const api = await as(alice).get(path, { accept: "application/json" });
      assert.equal(api.status, page.status, path);
      assert.match(String(api.headers["content-type"]), /^application\/json/);
      assert.deepEqual(Object.keys(api.body.error).sort(), ["code", "message", "requestId"]);
    }
    const anything = await as(alice).get("/_hv/no-such-page", { accept: "*/*" });
    assert.equal(anything.body.error.code, "not_found", "Accept: */* (fetch's default) keeps the JSON");
  });

  it("sends a browser a starting page that follows the start and says why it failed", async () => {
    const added = await t.operator.post<{ generation: { id: number } }>("/generations", NEVER_HEALTHY);
    assert.equal(added.status, 201, JSON.stringify(added.body));
    const { routing, manager } = t.daemon.services;
    await manager.assignGeneration(alice, routing.slotOf(alice, "dev"), added.body.generation.id);

    const page = await as(alice).get("/dev/", HTML);
    assert.equal(page.status, 503);
    assert.ok(page.headers["retry-after"], "Retry-After, as for every 503");
    assert.match(String(page.headers["content-type"]), /^text\/html/);
    assert.match(page.text, /Starting your dev sandbox/);
    const since = /data-since="(\d+)"/.exec(page.text)?.[1];
    assert.ok(since, "the page knows when it was sent, to ask about the start since then");

    let status = await as(alice).get(`/_hv/sandboxes/${alice}/dev?since=${since}`);
    assert.equal(status.status, 200, status.text);
    assert.equal(status.body.sandbox.state, "starting");
    const phases = new Set<string>();
    let latest: { steps: { phase: string; atMs: number }[]; lastAnswer?: string } | undefined;
    while (!status.body.failure) {
      if (status.body.progress) phases.add(status.body.progress.phase);
      latest = status.body.progress ?? latest;
      await sleep(200);
      status = await as(alice).get(`/_hv/sandboxes/${alice}/dev?since=${since}`);
    }
    assert.ok(phases.has("waiting for health"), `the page can show how the start goes: ${[...phases].join(", ")}`);
    const steps = latest?.steps ?? [];
    assert.deepEqual(
      steps.map((step) => step.phase),
      ["creating", "starting", "waiting for health"],
      "each step the runtime took, in order",
    );
    assert.ok(
      steps.every((step, i) => i === 0 || step.atMs >= steps[i - 1]!.atMs),
      `each with when it began: ${JSON.stringify(steps)}`,
    );
    assert.equal(typeof latest?.lastAnswer, "string", "and what /health last answered");
    assert.equal(status.body.failure.code, "start_timeout");
    assert.match(status.body.failure.message, /did not become healthy/);

    const later = await as(alice).get(`/_hv/sandboxes/${alice}/dev?since=${Date.now() + 60_000}`);
    assert.equal(later.body.failure, undefined, "a failure before `since` is not this page's");

    const api = await as(alice).get("/dev/", { accept: "application/json" });
    assert.equal(api.status, 503, "an API client still waits for the start and gets the JSON error");
    assert.equal(api.body.error.code, "start_timeout");
  });

  it("starts, restarts and stops the user's own sandbox, with its state, health and log lines", async () => {
    const start = await as(alice).post(`/_hv/sandboxes/${alice}/live/start`);
    assert.equal(start.status, 200, start.text);
    assert.equal(start.body.sandbox.state, "running");
    assert.equal(start.body.sandbox.healthy, true);
    assert.equal(typeof start.body.sandbox.generation, "number");
    // Just used by its start; the daemon's default idle tiers: a freeze only where the runtime can freeze.
    assert.match(start.body.sandbox.idle, /^last used \d\d:\d\d UTC; if unused until then, (frozen at .* then )?stopped at \d\d:\d\d UTC \(in 30 min\)$/);

    const restart = await as(alice).post(`/_hv/sandboxes/${alice}/live/restart`);
    assert.equal(restart.status, 200, restart.text);
    assert.equal(restart.body.sandbox.state, "running");

    const logs = await as(alice).get(`/_hv/sandboxes/${alice}/live/logs?tail=5`);
    assert.equal(logs.status, 200, logs.text);
    assert.ok(Array.isArray(logs.body.lines) && logs.body.lines.length > 0 && logs.body.lines.length <= 5, logs.text);
    assert.equal((await as(alice).get(`/_hv/sandboxes/${alice}/live/logs?tail=0`)).status, 400);

    const stop = await as(alice).post(`/_hv/sandboxes/${alice}/live/stop`);
    assert.equal(stop.status, 200, stop.text);
    assert.equal(stop.body.sandbox.state, "stopped");
    assert.equal(stop.body.sandbox.healthy, null);
    assert.equal(stop.body.sandbox.idle, "not running: opening it starts it");

    const audited = t.daemon.services.audit.list({ limit: 1000 }).filter((e) => e.actor === `user:${alice}` && e.action.startsWith("sandbox."));
    assert.deepEqual(audited.map((e) => [e.action, e.outcome]).sort(), [
      ["sandbox.restart", "ok"],
      ["sandbox.start", "ok"],
      ["sandbox.stop", "ok"],
    ]);
  });

  it("says 'not started' for a sandbox never started, with no log lines", async () => {
    const status = await as(bob).get(`/_hv/sandboxes/${bob}/live`);
    assert.equal(status.body.sandbox.state, "not started");
    const logs = await as(bob).get(`/_hv/sandboxes/${bob}/live/logs`);
    assert.deepEqual(logs.body, { lines: [] });
  });

  it("refuses another user's sandbox, another origin, no session and a recovery session", async () => {
    assert.equal((await as(bob).post(`/_hv/sandboxes/${bob}/live/start`)).status, 200);
    for (const path of [`/_hv/sandboxes/${bob}/live/stop`, `/_hv/sandboxes/${bob}/live/restart`]) {
      const res = await as(alice).post(path);
      assert.equal(res.status, 403, path);
      assert.equal(res.body.error.code, "forbidden");
    }
    assert.equal((await as(alice).get(`/_hv/sandboxes/${bob}/live`)).status, 403);
    assert.equal((await as(alice).get(`/_hv/sandboxes/${bob}/live/logs`)).status, 403);
    assert.equal((await as(bob).post(`/_hv/sandboxes/${bob}/live/stop`, undefined, { origin: "http://evil.example" })).status, 403);
    assert.equal((await as(bob).post(`/_hv/sandboxes/${bob}/live/stop`, undefined, { origin: "" })).status, 403, "no Origin");
    const anonymous = new PublicClient(t.publicUrl, ORIGIN);
    assert.equal((await anonymous.post(`/_hv/sandboxes/${bob}/live/stop`)).status, 401);
    assert.equal((await as(bob).get(`/_hv/sandboxes/${bob}/live`)).body.sandbox.state, "running", "nothing refused stopped it");

    const codes = await as(bob).regenerateRecoveryCodes(keys.get(bob)!);
    const recovering = new PublicClient(t.publicUrl, ORIGIN);
    assert.equal((await recovering.recover(bob, codes.body.recoveryCodes[0]!)).status, 200);
    assert.equal((await recovering.post(`/_hv/sandboxes/${bob}/live/stop`)).status, 401, "a recovery session may only enrol a passkey");

    assert.equal((await as(bob).post(`/_hv/sandboxes/${bob}/staging/start`)).status, 400);
    assert.equal((await as(bob).post(`/_hv/sandboxes/${bob}/live/explode`)).status, 404);
  });

  it("renames the user's own passkey, and only with a name", async () => {
    const rename = (c: PublicClient, id: string, body: unknown) =>
      c.send("PATCH", `/auth/passkeys/${id}`, JSON.stringify(body), { "content-type": "application/json" });
    const [mine] = (await as(alice).get("/auth/passkeys")).body.passkeys;
    const renamed = await rename(as(alice), mine.id, { name: "  Work laptop " });
    assert.equal(renamed.status, 200, renamed.text);
    assert.equal(renamed.body.passkey.name, "Work laptop");
    assert.equal((await as(alice).get("/auth/passkeys")).body.passkeys[0].name, "Work laptop");

    const empty = await rename(as(alice), mine.id, { name: " " });
    assert.equal(empty.status, 400);
    assert.match(empty.body.error.message, /give the passkey a name/);
    assert.equal((await rename(as(bob), mine.id, { name: "mine now" })).status, 404, "another user's passkey");
    assert.equal((await rename(as(alice), mine.id, { name: "x" }).then(() => as(alice).get("/auth/passkeys"))).body.passkeys[0].name, "x");
    const crossSite = await as(alice).send("PATCH", `/auth/passkeys/${mine.id}`, JSON.stringify({ name: "evil" }), {
      "content-type": "application/json",
      origin: "http://evil.example",
    });
    assert.equal(crossSite.status, 403);
  });
});

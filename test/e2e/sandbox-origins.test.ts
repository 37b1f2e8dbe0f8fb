import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, request, type Server } from "node:http";
import { after, before, describe, it } from "node:test";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { browserSkipReason, launchBrowser, pageWithPasskeys } from "../helpers/browser.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { freePort } from "../helpers/ports.js";
import { testUser } from "../helpers/run-id.js";

const skip = browserSkipReason();

/**
 * DESIGN §4 sandbox origins in Chromium, with HYPERVISOR_SANDBOX_DOMAIN=localhost: Chromium
 * resolves every *.localhost name to loopback, so live-<user>.localhost:<port> reaches the daemon.
 */
describe("sandbox origins in a real browser", { skip }, () => {
  let t: TestDaemon;
  let browser: Browser;
  let port: number;
  let origin: string;
  const users: string[] = [];
  const sandboxOrigin = (user: string, role: "live" | "dev") => `http://${role}-${user}.localhost:${port}`;

  async function register(context: BrowserContext, name: string): Promise<{ user: string; page: Page }> {
    const user = testUser(name);
    users.push(user);
    const page = await pageWithPasskeys(context);
    await page.goto(`${origin}/register`);
    await page.fill("#username", user);
    await page.click("#register");
    await page.locator("#continue").waitFor({ timeout: 15_000 });
    // Continue goes to /, which in this mode is the live sandbox on its own origin.
    await page.click("#continue");
    await page.waitForURL(`${sandboxOrigin(user, "live")}/`, { timeout: 20_000 });
    await page.locator("#role").waitFor();
    return { user, page };
  }
  const sandboxCookieOf = async (context: BrowserContext, user: string, role: "live" | "dev") =>
    (await context.cookies()).find((c) => c.name === "hv_sandbox" && c.domain === `${role}-${user}.localhost`);

  before(async () => {
    port = await freePort();
    origin = `http://localhost:${port}`;
    t = await bootDaemon({ env: { HYPERVISOR_LISTEN: `127.0.0.1:${port}`, HYPERVISOR_PUBLIC_ORIGIN: origin, HYPERVISOR_SANDBOX_DOMAIN: "localhost" } });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    for (const user of users) for (const role of ["live", "dev"] as const) await t?.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t?.close();
  });

  it("registers, opens live and dev on their own origins, runs a WebSocket task, and logout ends the sandbox cookies", async () => {
    const context = await browser.newContext();
    const { user, page } = await register(context, "so-browser");
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    assert.equal((await page.textContent("#user"))?.trim(), user);
    assert.equal((await page.textContent("#role"))?.trim(), "live");
    const live = await sandboxCookieOf(context, user, "live");
    assert.ok(live, "hv_sandbox for the live origin");
    assert.deepEqual([live.httpOnly, live.sameSite, live.path], [true, "Lax", "/"], "host-only, HttpOnly, SameSite=Lax");
    assert.ok(!(await context.cookies()).some((c) => c.name === "hv_sandbox" && c.domain.startsWith(".")), "no Domain cookie");

    await page.goto(`${origin}/_hv/account`);
    await page.click("#open-dev");
    await page.waitForURL(`${sandboxOrigin(user, "dev")}/`, { timeout: 20_000 });
    assert.equal((await page.textContent("#role"))?.trim(), "dev");
    await page.fill("#task-input", "hello from its own origin");
    await page.click("#task-run");
    await page.locator("#task-result", { hasText: "HELLO FROM ITS OWN ORIGIN" }).waitFor({ timeout: 15_000 });

    // The sandbox's own origin serves nothing of the hypervisor's: its link leads to the public origin's account page.
    assert.equal(await page.getAttribute("#hv-account", "href"), `${origin}/_hv/account`);
    await page.click("#hv-account");
    await page.waitForURL(`${origin}/_hv/account`);
    await page.click("#logout");
    await page.waitForURL(/\/login/, { timeout: 10_000 });
    for (const role of ["live", "dev"] as const) {
      assert.ok(await sandboxCookieOf(context, user, role), `the ${role} cookie is still in the browser ...`);
      await page.goto(`${sandboxOrigin(user, role)}/`);
      assert.equal(new URL(page.url()).origin, origin, `... but no longer opens ${role}`);
      assert.equal(new URL(page.url()).pathname, "/login");
    }
    assert.deepEqual(errors, []);
    await context.close();
  });

  it("refuses one user's hv_sandbox on another user's origin", async () => {
    const [a, b] = [await browser.newContext(), await browser.newContext()];
    const { user: alice } = await register(a, "so-alice");
    const { user: bob } = await register(b, "so-bob");
    const bobs = (await sandboxCookieOf(b, bob, "live"))!;
    const stranger = await browser.newContext();
    await stranger.addCookies([{ name: "hv_sandbox", value: bobs.value, domain: `live-${alice}.localhost`, path: "/", httpOnly: true, sameSite: "Lax" }]);
    const page = await stranger.newPage();
    await page.goto(`${sandboxOrigin(alice, "live")}/`);
    assert.equal(new URL(page.url()).origin, origin, "sent to sign in on the public origin, not served");
    assert.equal(new URL(page.url()).pathname, "/login");
    for (const c of [a, b, stranger]) await c.close();
  });

  it("defeats cookie tossing and a launch link with the attacker's code", async () => {
    const attacker = testUser("so-attacker");
    users.push(attacker);
    assert.equal((await t.operator.post("/users", { name: attacker })).status, 201);
    const attackerSession = t.daemon.services.sessions.create(attacker, "full").token;
    // The attacker's own launch link: it opens the attacker's sandbox origin in whoever follows it.
    const location = await new Promise<string>((resolve, reject) => {
      request(
        { host: "127.0.0.1", port, path: "/_hv/launch?role=live", headers: { host: `localhost:${port}`, cookie: `hv_session=${attackerSession}` } },
        (res) => {
          res.resume();
          resolve(String(res.headers.location));
        },
      )
        .on("error", reject)
        .end();
    });

    // A sibling page (another port: cookies ignore ports) tosses the attacker's session in as in path mode.
    const sibling: Server = createServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(`<!doctype html><script>document.cookie = "hv_session=${attackerSession}; Path=/dev";</script><p id="done">tossed</p>`);
    });
    sibling.listen(0, "127.0.0.1");
    await once(sibling, "listening");
    try {
      const context = await browser.newContext();
      const { user: victim, page } = await register(context, "so-victim");
      const codes = () => JSON.stringify(t.daemon.services.db.prepare("SELECT hash FROM recovery_codes WHERE user = ? ORDER BY hash").all(victim));
      const before = codes();
      await page.goto(`http://localhost:${(sibling.address() as { port: number }).port}/`);
      await page.locator("#done").waitFor();

      // The victim follows the attacker's link and lands on the attacker's sandbox, on its own origin.
      await page.goto(location);
      await page.waitForURL(`${sandboxOrigin(attacker, "live")}/`, { timeout: 20_000 });
      assert.equal((await page.textContent("#user"))?.trim(), attacker);
      // Its script tries what worked in path mode.
      const attempt = await page.evaluate(
        async ({ publicOrigin, victimOrigin }) => {
          // Runs in the page; this file is compiled with Node's types, which have no DOM.
          (globalThis as unknown as { document: { cookie: string } }).document.cookie = "hv_session=x; Domain=localhost; Path=/";
          const steal = await fetch(`${publicOrigin}/auth/recovery-codes`, {
            method: "POST",
            credentials: "include",
            headers: { "content-type": "application/json" },
            body: "{}",
          }).then(
            async (r) => `read ${r.status}: ${await r.text()}`,
            () => "blocked",
          );
          const socket = await new Promise<string>((resolve) => {
            const ws = new WebSocket(`${victimOrigin.replace("http", "ws")}/ws`);
            ws.onopen = () => resolve("open");
            ws.onerror = () => resolve("refused");
          });
          return { steal, socket };
        },
        { publicOrigin: origin, victimOrigin: sandboxOrigin(victim, "live") },
      );
      assert.deepEqual(attempt, { steal: "blocked", socket: "refused" });
      assert.equal(codes(), before, "no new recovery codes were made");

      // The victim's own sandboxes are still the victim's; the toss at Path=/dev changed nothing.
      for (const role of ["live", "dev"] as const) {
        await page.goto(`${origin}/_hv/account`);
        await page.click(`#open-${role}`);
        await page.waitForURL(`${sandboxOrigin(victim, role)}/`, { timeout: 20_000 });
        assert.equal((await page.textContent("#user"))?.trim(), victim, role);
      }
      assert.ok(!(await context.cookies()).some((c) => c.name === "hv_session" && c.value === "x"), "no session cookie was tossed across hosts");
      await context.close();
    } finally {
      sibling.close();
    }
  });
});

import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type Server } from "node:http";
import { after, before, describe, it } from "node:test";
import type { Browser } from "playwright-core";
import { browserSkipReason, launchBrowser, pageWithPasskeys } from "../helpers/browser.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { freePort } from "../helpers/ports.js";
import { testUser } from "../helpers/run-id.js";

const skip = browserSkipReason();

/**
 * The audit's cookie-tossing takeover, end to end. Cookies ignore ports (RFC 6265 §8.5), so a
 * page on another port of localhost stands for a sibling origin that can set cookies for the
 * hypervisor's host: it tosses the attacker's session in at Path=/dev, where the browser sends
 * it before the victim's own.
 */
describe("cookie tossing from a sibling origin, in a real browser", { skip }, () => {
  let t: TestDaemon;
  let browser: Browser;
  let sibling: Server;
  let origin: string;
  let siblingOrigin: string;
  const victim = testUser("toss-victim");
  const attacker = testUser("toss-attacker");

  before(async () => {
    const port = await freePort();
    origin = `http://localhost:${port}`;
    t = await bootDaemon({ env: { HYPERVISOR_LISTEN: `127.0.0.1:${port}`, HYPERVISOR_PUBLIC_ORIGIN: origin } });
    assert.equal((await t.operator.post("/users", { name: attacker })).status, 201);
    const attackerToken = t.daemon.services.sessions.create(attacker, "full").token;
    sibling = createServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(`<!doctype html><title>sibling</title><script>document.cookie = "hv_session=${attackerToken}; Path=/dev";</script><p id="done">tossed</p>`);
    });
    sibling.listen(0, "127.0.0.1");
    await once(sibling, "listening");
    siblingOrigin = `http://localhost:${(sibling.address() as { port: number }).port}`;
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    sibling?.close();
    for (const user of [victim, attacker])
      for (const role of ["live", "dev"] as const) await t?.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t?.close();
  });

  it("does not serve the attacker's dev sandbox to the victim, clears both cookies, and new recovery codes need a step-up", async () => {
    const context = await browser.newContext();
    const page = await pageWithPasskeys(context);
    const sessionCookies = async () => (await context.cookies()).filter((c) => c.name === "hv_session" && c.domain === "localhost").map((c) => c.path);

    await page.goto(`${origin}/register`);
    await page.fill("#username", victim);
    await page.click("#register");
    await page.locator("#continue").waitFor({ timeout: 15_000 });

    await page.goto(`${siblingOrigin}/`);
    await page.locator("#done").waitFor();
    assert.deepEqual((await sessionCookies()).sort(), ["/", "/dev"], "the sibling page set its cookie beside the victim's");

    await page.goto(`${origin}/dev/`);
    const url = new URL(page.url());
    const shown = url.pathname === "/dev/" ? await page.textContent("#user") : null;
    assert.notEqual(shown?.trim(), attacker, "the attacker's dev sandbox ran on the hypervisor's origin");
    assert.equal(url.pathname, "/login", "two sessions are no session: the victim is asked to sign in");
    assert.deepEqual(await sessionCookies(), [], "both hv_session cookies were expired");

    // What the attacker's page would have done next, from the same origin.
    const stealCodes = () =>
      page.evaluate(async () => {
        const res = await fetch("/auth/recovery-codes", { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
        return { status: res.status, body: (await res.json()) as { error?: { code?: string }; recoveryCodes?: string[] } };
      });
    const signedOut = await stealCodes();
    assert.equal(signedOut.status, 401, JSON.stringify(signedOut.body));

    // Signed in again, the victim's own dev sandbox is back, and codes still need a fresh passkey.
    await page.click("#login");
    await page.waitForURL(`${origin}/dev/`, { timeout: 15_000 });
    assert.equal((await page.textContent("#user"))?.trim(), victim);
    const noStepUp = await stealCodes();
    assert.equal(noStepUp.status, 403, JSON.stringify(noStepUp.body));
    assert.equal(noStepUp.body.error?.code, "step_up_required");
    assert.equal(noStepUp.body.recoveryCodes, undefined);

    // The owner makes new codes once they confirm: the page asks the passkey, then makes the call.
    await page.goto(`${origin}/_hv/account`);
    await page.click("#regenerate");
    await page.click("#confirm-ok");
    await page.locator("#recovery-codes li").first().waitFor({ timeout: 15_000 });
    assert.equal(await page.locator("#recovery-codes li").count(), 10);
    await context.close();
  });
});

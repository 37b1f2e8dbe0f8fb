import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Browser } from "playwright-core";
import { browserSkipReason, launchBrowser, pageWithPasskeys } from "../helpers/browser.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { freePort } from "../helpers/ports.js";
import { testUser } from "../helpers/run-id.js";

const skip = browserSkipReason();

describe("in a real browser", { skip }, () => {
  let t: TestDaemon;
  let browser: Browser;
  let origin: string;
  const user = testUser("browser");

  before(async () => {
    const port = await freePort();
    // localhost is a secure context, so WebAuthn works over plain http here.
    origin = `http://localhost:${port}`;
    t = await bootDaemon({ env: { HYPERVISOR_LISTEN: `127.0.0.1:${port}`, HYPERVISOR_PUBLIC_ORIGIN: origin } });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    for (const role of ["live", "dev"] as const) await t?.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t?.close();
  });

  it("registers with a passkey, reaches live and dev, runs a WebSocket task, and logs out", async () => {
    const context = await browser.newContext();
    const page = await pageWithPasskeys(context);
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));

    // An anonymous visit is sent to sign in first.
    await page.goto(`${origin}/`);
    assert.match(new URL(page.url()).pathname, /^\/login$/);

    await page.goto(`${origin}/register`);
    await page.fill("#username", user);
    await page.click("#register");
    const codes = page.locator("#recovery-codes li");
    await codes.first().waitFor({ timeout: 15_000 });
    assert.equal(await codes.count(), 10, "ten recovery codes are shown once");
    await page.click("#continue");

    // The live sandbox's page, with identity from the proxy's headers.
    await page.waitForURL(`${origin}/`, { timeout: 15_000 });
    await page.locator("#role").waitFor();
    assert.equal((await page.textContent("#user"))?.trim(), user);
    assert.equal((await page.textContent("#role"))?.trim(), "live");

    // The dev sandbox, and a task over its WebSocket through the proxy.
    await page.goto(`${origin}/dev/`);
    assert.equal((await page.textContent("#role"))?.trim(), "dev");
    await page.fill("#task-input", "hello from chromium");
    await page.click("#task-run");
    await page.locator("#task-result", { hasText: "HELLO FROM CHROMIUM" }).waitFor({ timeout: 15_000 });
    await page.locator("#task-history li", { hasText: "hello from chromium" }).first().waitFor({ timeout: 5000 });

    // The account page lists the passkey; logging out ends the session.
    await page.goto(`${origin}/_hv/account`);
    await page.locator("#passkeys li").first().waitFor();
    await page.click("#logout");
    await page.waitForURL(/\/login/, { timeout: 10_000 });
    await page.goto(`${origin}/dev/`);
    assert.match(new URL(page.url()).pathname, /^\/login$/, "after logout the sandbox is out of reach");
    assert.deepEqual(errors, [], "no script errors on any page");
    await context.close();
  });

  it("signs in again with the same passkey", async () => {
    const context = await browser.newContext();
    const page = await pageWithPasskeys(context);
    await page.goto(`${origin}/register`);
    const fresh = testUser("browser2");
    await page.fill("#username", fresh);
    await page.click("#register");
    await page.locator("#continue").waitFor({ timeout: 15_000 });
    await page.click("#continue");
    await page.waitForURL(`${origin}/`);
    await page.goto(`${origin}/_hv/account`);
    await page.click("#logout");
    await page.waitForURL(/\/login/);
    await page.click("#login");
    await page.waitForURL(`${origin}/`, { timeout: 15_000 });
    await page.locator("#user").waitFor();
    assert.equal((await page.textContent("#user"))?.trim(), fresh);
    for (const role of ["live", "dev"] as const) await t.daemon.services.manager.stop(fresh, role).catch(() => undefined);
    await context.close();
  });
});

import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type Server } from "node:http";
import { after, before, describe, it } from "node:test";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { browserSkipReason, launchBrowser, pageWithPasskeys } from "../helpers/browser.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { freePort } from "../helpers/ports.js";
import { testUser } from "../helpers/run-id.js";

const skip = browserSkipReason();

/** The page's ServiceWorkerContainer, as much of it as these tests use (tests compile without DOM types). */
type InPage = {
  navigator: {
    serviceWorker: {
      register(url: string, options: { scope: string }): Promise<unknown>;
      ready: Promise<unknown>;
      controller: unknown;
      getRegistrations(): Promise<unknown[]>;
      getRegistration(scope: string): Promise<{ update(): Promise<unknown> } | undefined>;
    };
  };
};

/** Takes over the whole origin at once, and sends every request on to the network: it sees them all. */
const PASS_THROUGH = `self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (e) => e.waitUntil(self.clients.claim()));
self.addEventListener("fetch", (e) => e.respondWith(fetch(e.request)));`;
/** Answers every page itself, as a worker that forges the account pages would. */
const FORGER = `self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (e) => e.waitUntil(self.clients.claim()));
self.addEventListener("fetch", (e) => {
  if (e.request.mode === "navigate") e.respondWith(new Response('<p id="forged">forged</p>', { headers: { "content-type": "text/html" } }));
});`;

/**
 * The audit's F8 in a real browser: in path mode a sandbox page registered a service worker with
 * scope `/` on the public origin, which then saw the next user's account pages. The proxy now
 * refuses a worker's script from a sandbox path; these are the browsers that already have one.
 * Before the daemon starts, a stand-in on the same origin answers as a sandbox did through the
 * proxy before the refusal (script and scope passed), so each browser registers a worker there.
 */
describe("a browser that already has a sandbox's service worker on the public origin", { skip }, () => {
  let t: TestDaemon;
  let browser: Browser;
  let origin: string;
  const contexts: BrowserContext[] = [];
  const victim = testUser("sw-victim");

  /** A context whose browser registered `script` with scope `/` and is controlled by it. */
  async function registered(script: string): Promise<{ context: BrowserContext; page: Page }> {
    const context = await browser.newContext();
    contexts.push(context);
    const page = await pageWithPasskeys(context);
    await page.goto(`${origin}/sandbox-page`);
    await page.evaluate(async (url) => {
      await (globalThis as unknown as InPage).navigator.serviceWorker.register(url, { scope: "/" });
      await (globalThis as unknown as InPage).navigator.serviceWorker.ready;
    }, script);
    return { context, page };
  }

  const registrations = (page: Page) => page.evaluate(async () => (await (globalThis as unknown as InPage).navigator.serviceWorker.getRegistrations()).length);

  async function until(what: string, check: () => Promise<boolean>, ms = 10_000): Promise<void> {
    for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 100))) if (await check()) return;
    assert.fail(what);
  }

  let passThrough: Page;
  let forger: Page;

  before(async () => {
    const port = await freePort();
    origin = `http://localhost:${port}`;
    browser = await launchBrowser();
    const standIn: Server = createServer((req, res) => {
      const script = req.url === "/sw-pass.js" ? PASS_THROUGH : req.url === "/sw-forge.js" ? FORGER : undefined;
      if (script) return res.writeHead(200, { "content-type": "text/javascript", "service-worker-allowed": "/" }).end(script);
      res.writeHead(200, { "content-type": "text/html" }).end("<title>a sandbox page</title><p>sandbox</p>");
    });
    standIn.listen(port, "127.0.0.1");
    await once(standIn, "listening");
    try {
      passThrough = (await registered("/sw-pass.js")).page;
      forger = (await registered("/sw-forge.js")).page;
      await forger.goto(`${origin}/_hv/account`);
      assert.equal(await forger.locator("#forged").count(), 1, "the forging worker answers the account page");
    } finally {
      standIn.closeAllConnections();
      standIn.close();
      await once(standIn, "close");
    }
    t = await bootDaemon({ env: { HYPERVISOR_LISTEN: `127.0.0.1:${port}`, HYPERVISOR_PUBLIC_ORIGIN: origin } });
  });
  after(async () => {
    for (const context of contexts) await context.close().catch(() => undefined);
    await browser?.close();
    for (const role of ["live", "dev"] as const) await t?.daemon.services.manager.stop(victim, role).catch(() => undefined);
    await t?.close();
  });

  it("signs up and shows the account page, and the worker is gone for every page after", async () => {
    const page = passThrough;
    await page.goto(`${origin}/register`);
    await page.fill("#username", victim);
    await page.click("#register");
    await page.locator("#continue").waitFor({ timeout: 15_000 });
    await until("the stray worker is still registered after the account pages loaded", async () => (await registrations(page)) === 0);
    await page.goto(`${origin}/_hv/account`);
    await page.locator("h1", { hasText: "Your account" }).waitFor({ timeout: 10_000 });
    assert.equal(await page.evaluate(() => (globalThis as unknown as InPage).navigator.serviceWorker.controller), null, "no worker controls the account page");
    // The sandbox's pages still work, without a worker.
    await page.goto(`${origin}/`);
    await page.locator("#role").waitFor({ timeout: 20_000 });
  });

  it("loses a worker that forges every page at the browser's next update check, and the real pages come back", async () => {
    const page = forger;
    // What a browser does by itself after navigations and at least daily (it may have done so
    // already): fetch the script again, bypassing every worker. The refusal's Clear-Site-Data
    // removes the registration.
    await page.evaluate(async () => {
      const registration = await (globalThis as unknown as InPage).navigator.serviceWorker.getRegistration("/");
      await registration?.update().catch(() => undefined);
    });
    await until("the forging worker survived its update check", async () => (await registrations(page)) === 0);
    await page.goto(`${origin}/login`);
    await page.locator("h1", { hasText: "Sign in" }).waitFor({ timeout: 10_000 });
    assert.equal(await page.locator("#forged").count(), 0);
  });
});

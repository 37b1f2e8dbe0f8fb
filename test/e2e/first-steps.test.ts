import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { browserSkipReason, launchBrowser, pageWithPasskeys } from "../helpers/browser.js";
import { daemonEnv, spawnDaemon, tempDir, type SpawnedDaemon } from "../helpers/daemon.js";
import { repoRoot } from "../helpers/paths.js";
import { freePort } from "../helpers/ports.js";
import { testUser } from "../helpers/run-id.js";

const skip = browserSkipReason();
const SHOTS = join(repoRoot, "test-results", "first-steps");
const AXE = createRequire(import.meta.url).resolve("axe-core/axe.min.js");
/** WCAG 2.1 A and AA, the level the pages are held to. */
const WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"];

interface AxeViolation {
  id: string;
  help: string;
  nodes: { target: string[] }[];
}

/**
 * The URL the daemon says to open, from its start line when it prints one; otherwise the
 * public origin it was given.
 */
function printedUrl(output: string, fallback: string): string {
  const line = output.split("\n").find((l) => l.includes("hypervisor started"));
  return /"(?:url|open)":"(http[^"]+)"/.exec(line ?? "")?.[1]?.replace(/\/$/, "") ?? fallback;
}

describe("the README's first steps in a real browser, on a fresh state dir", { skip }, () => {
  let daemon: SpawnedDaemon;
  let browser: Browser;
  let url: string;
  const state = tempDir();
  const user = testUser("first");
  const other = testUser("first-b");
  const violations: string[] = [];

  /** A screenshot in each colour scheme, and axe-core's WCAG 2.1 AA check of each. */
  async function check(page: Page, name: string): Promise<void> {
    for (const colorScheme of ["light", "dark"] as const) {
      await page.emulateMedia({ colorScheme });
      await page.screenshot({ path: join(SHOTS, `${name}-${colorScheme}.png`), fullPage: true });
      if (!(await page.evaluate(() => "axe" in globalThis))) await page.addScriptTag({ path: AXE });
      const found = await page.evaluate(async (tags) => {
        const { axe } = globalThis as unknown as { axe: { run(o: unknown): Promise<{ violations: AxeViolation[]; passes: unknown[] }> } };
        const result = await axe.run({ runOnly: { type: "tag", values: tags } });
        return { violations: result.violations, passed: result.passes.length };
      }, WCAG_21_AA);
      assert.ok(found.passed > 0, `axe checked ${name}`);
      for (const v of found.violations) violations.push(`${name} (${colorScheme}): ${v.id}: ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
    }
    await page.emulateMedia({ colorScheme: "light" });
  }

  /** The injected checker needs no inline-script permission from the pages' CSP. */
  const newContext = (): Promise<BrowserContext> => browser.newContext({ bypassCSP: true, permissions: ["clipboard-read", "clipboard-write"] });

  before(async () => {
    mkdirSync(SHOTS, { recursive: true });
    const port = await freePort();
    const origin = `http://localhost:${port}`;
    daemon = await spawnDaemon(
      daemonEnv(state.path, {
        HYPERVISOR_LISTEN: `127.0.0.1:${port}`,
        HYPERVISOR_PUBLIC_ORIGIN: origin,
        HYPERVISOR_LOG_LEVEL: "info",
        HYPERVISOR_START_TIMEOUT_MS: "8000",
      }),
    );
    url = printedUrl(daemon.output(), origin);
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    for (const u of [user, other]) for (const role of ["live", "dev"]) await daemon?.operator.post(`/sandboxes/${u}/${role}/stop`).catch(() => undefined);
    await daemon?.kill("SIGTERM");
    state.remove();
  });

  it("registers, opens live and dev through their starting pages, and runs the account page's actions", async () => {
    const context = await newContext();
    const page = await pageWithPasskeys(context);
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));

    await page.goto(url);
    assert.equal(new URL(page.url()).pathname, "/login", "the printed URL asks a new visitor to sign in");
    await check(page, "01-login");

    await page.click("text=Create an account");
    await page.waitForURL(/\/register/);
    await page.click("#register");
    assert.equal((await page.textContent("#username-error"))?.trim(), "Choose a user name.");
    assert.equal(await page.getAttribute("#username", "aria-invalid"), "true");
    assert.match((await page.getAttribute("#username", "aria-describedby")) ?? "", /\busername-error\b/);
    await check(page, "02-register-invalid");

    await page.fill("#username", user);
    await page.click("#register");
    await page.locator("#recovery-codes li").first().waitFor({ timeout: 15_000 });
    assert.equal(await page.locator("#recovery-codes li").count(), 10);
    await page.click("#copy-codes");
    await page.locator("#status", { hasText: "copied" }).waitFor();
    assert.equal(
      (
        await page.evaluate(() => (globalThis as unknown as { navigator: { clipboard: { readText(): Promise<string> } } }).navigator.clipboard.readText())
      ).split("\n").length,
      10,
      "the copy button copies all ten codes",
    );
    await check(page, "03-recovery-codes");

    // Live was never started: a page that follows its start, then the sandbox itself.
    await page.click("#continue");
    await page.locator("#start-title, #role").first().waitFor({ timeout: 15_000 });
    if (await page.locator("#start-title").count()) {
      assert.match((await page.textContent("#start-title")) ?? "", /Starting your live sandbox/);
      await page.screenshot({ path: join(SHOTS, "04-starting-live.png") });
    }
    await page.locator("#role").waitFor({ timeout: 20_000 });
    assert.equal((await page.textContent("#role"))?.trim(), "live");
    assert.equal((await page.textContent("#user"))?.trim(), user);
    await page.screenshot({ path: join(SHOTS, "05-live.png") });

    await page.goto(`${url}/dev/`);
    await page.locator("#role", { hasText: "dev" }).waitFor({ timeout: 20_000 });
    await page.screenshot({ path: join(SHOTS, "06-dev.png") });

    // The sandbox links to the account page.
    await page.click("#hv-account");
    await page.waitForURL(/\/_hv\/account$/);
    assert.equal((await page.textContent("#menu-user"))?.trim(), user);
    assert.equal((await page.textContent("#live-state"))?.trim(), "running");
    assert.equal((await page.textContent("#dev-health"))?.trim(), "healthy");
    assert.match((await page.textContent("#data-on-swap")) ?? "", /after a\s+swap your live sandbox shows what dev had/);
    await check(page, "07-account");

    await page.click("text=Stop live");
    // The result is said next to the buttons, where the user is looking.
    await page.locator("#live-message", { hasText: "live: stopped." }).waitFor({ timeout: 20_000 });
    assert.equal((await page.textContent("#live-state"))?.trim(), "stopped");
    await page.click("text=Start live");
    await page.locator("#live-state", { hasText: "running" }).waitFor({ timeout: 20_000 });
    await page.click("text=Restart dev");
    await page.locator("#dev-message", { hasText: "dev: running, healthy" }).waitFor({ timeout: 20_000 });
    assert.notEqual((await page.textContent("#dev-logs"))?.trim(), "", "the last log lines");
    assert.doesNotMatch((await page.textContent("#dev-logs")) ?? "", /^\{/m, "the sandbox's JSON lines read as text");
    assert.match((await page.textContent("#dev-logs")) ?? "", /^… \d+ health checks?$/m, "its health probes folded");
    await check(page, "08-account-after-actions");

    // Rename a passkey in the page's dialog.
    await page.click("#passkeys button[data-rename]");
    await page.fill("#rename-name", "");
    await page.click("#rename-save");
    assert.equal((await page.textContent("#rename-name-error"))?.trim(), "Give the passkey a name.");
    await check(page, "09-rename-dialog");
    await page.fill("#rename-name", "This browser");
    await page.click("#rename-save");
    await page.locator(".passkey-name", { hasText: "This browser" }).waitFor();

    // New codes are asked for twice: cancelled, nothing changes; confirmed, they are made.
    await page.click("#regenerate");
    await page.locator("#confirm-dialog[open]").waitFor();
    await check(page, "10-confirm-new-codes");
    await page.click("#confirm-cancel");
    await page.locator("#status", { hasText: "unchanged" }).waitFor();
    await page.click("#regenerate");
    await page.click("#confirm-ok");
    await page.locator("#recovery-codes li").first().waitFor({ timeout: 15_000 });
    assert.deepEqual(errors, [], "no script errors on any page");
    await context.close();
  });

  it("shows the HTML starting page while a broken sandbox starts, then why it failed, and an HTML error page", async () => {
    const added = await daemon.operator.post<{ generation: { id: number } }>("/generations", {
      command: [process.execPath, "-e", "setInterval(() => {}, 1000)"],
      version: "never-healthy",
    });
    assert.equal(added.status, 201);
    const deployed = await daemon.operator.post("/deploy", { generation: added.body.generation.id, users: [user] });
    assert.notEqual(deployed.status, 200, "the broken generation never becomes healthy");

    const context = await newContext();
    const page = await pageWithPasskeys(context);
    await page.goto(`${url}/login`);
    await page.fill("#username", user);
    // A fresh browser context holds no passkey: the page says so in words.
    await page.click("#login");
    await page.locator("#status.error").waitFor({ timeout: 70_000 });
    assert.match((await page.textContent("#status")) ?? "", new RegExp(`No passkey for “${user}” was used`));
    await check(page, "11-login-no-passkey");
    await context.close();

    // The registered browser's session, from the first test's context, is gone: sign in anew.
    const signedIn = await newContext();
    const again = await pageWithPasskeys(signedIn);
    await again.goto(`${url}/register`);
    await again.fill("#username", other);
    await again.click("#register");
    await again.locator("#continue").waitFor({ timeout: 15_000 });
    await daemon.operator.post("/deploy", { generation: added.body.generation.id, users: [other] });

    const response = await again.goto(`${url}/dev/`);
    assert.equal(response?.status(), 503);
    assert.match((await again.textContent("#start-title")) ?? "", /Starting your dev sandbox/);
    assert.equal(await again.locator("#retry").isVisible(), false, "nothing to retry while it starts");
    // It follows the start: seconds so far, and the health checks not answered yet.
    await again.locator("#start-elapsed", { hasText: "health check" }).waitFor({ timeout: 10_000 });
    await check(again, "12-starting-dev");
    await again.locator("#start-failure:not([hidden])").waitFor({ timeout: 30_000 });
    assert.match((await again.textContent("#start-title")) ?? "", /did not start/);
    assert.match((await again.textContent("#start-failure")) ?? "", /did not become healthy/);
    assert.equal(await again.locator("#retry").isVisible(), true, "a failed start can be retried");
    await check(again, "13-start-failed");

    const missing = await again.goto(`${url}/_hv/no-such-page`);
    assert.equal(missing?.status(), 404);
    assert.equal(await again.locator("#to-account").getAttribute("href"), "/_hv/account");
    assert.ok(((await again.textContent("#request-id")) ?? "").length > 8, "the request id, small");
    await check(again, "14-error-page");

    await again.goto(`${url}/recovery`);
    await check(again, "15-recovery");
    await signedIn.close();
    assert.deepEqual(violations, [], "no WCAG 2.1 AA violation on any page, in either colour scheme");
  });
});

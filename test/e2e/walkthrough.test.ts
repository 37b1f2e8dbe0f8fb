import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Browser, Page } from "playwright-core";
import { browserSkipReason, launchBrowser, pageWithPasskeys } from "../helpers/browser.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { repoRoot } from "../helpers/paths.js";
import { freePort } from "../helpers/ports.js";
import { testUser } from "../helpers/run-id.js";

const skip = browserSkipReason();
const SHOTS = join(repoRoot, "test-results", "walkthrough");
const AXE = createRequire(import.meta.url).resolve("axe-core/axe.min.js");
const WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"];
const WIDTHS = { desktop: { width: 1280, height: 800 }, phone: { width: 390, height: 844 } } as const;
/** A generation that runs but never answers /health: its start is followed, then fails. */
const NEVER_HEALTHY = { command: [process.execPath, "-e", "setInterval(() => {}, 1000)"], version: "never-healthy" };

interface Box {
  x: number;
  y: number;
  width: number;
  height: number;
}

const overlap = (a: Box, b: Box) =>
  Math.min(a.x + a.width, b.x + b.width) - Math.max(a.x, b.x) > 0.5 && Math.min(a.y + a.height, b.y + b.height) - Math.max(a.y, b.y) > 0.5;
const inside = (inner: Box, outer: Box) =>
  inner.x >= outer.x - 0.5 &&
  inner.y >= outer.y - 0.5 &&
  inner.x + inner.width <= outer.x + outer.width + 0.5 &&
  inner.y + inner.height <= outer.y + outer.height + 0.5;

/** axe-core's serious and critical WCAG 2.1 AA findings on the page as it is now, as lines. */
async function seriousViolations(page: Page, name: string): Promise<string[]> {
  if (!(await page.evaluate(() => "axe" in globalThis))) await page.addScriptTag({ path: AXE });
  const found = await page.evaluate(async (tags) => {
    const { axe } = globalThis as unknown as {
      axe: { run(o: unknown): Promise<{ violations: { id: string; impact: string; help: string; nodes: { target: string[] }[] }[]; passes: unknown[] }> };
    };
    const result = await axe.run({ runOnly: { type: "tag", values: tags } });
    return { violations: result.violations, passed: result.passes.length };
  }, WCAG_21_AA);
  assert.ok(found.passed > 0, `axe checked ${name}`);
  return found.violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${name}: ${v.impact} ${v.id}: ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
}

/** Nothing wider than the window: a phone never scrolls sideways to read a page. */
async function assertNoSidewaysScroll(page: Page, name: string): Promise<void> {
  const [scroll, client] = await page.evaluate<[number, number]>("[document.documentElement.scrollWidth, document.documentElement.clientWidth]");
  assert.ok(scroll <= client, `${name}: the page is ${scroll} px wide in a ${client} px window`);
}

/** The recovery codes: ten, each within its own list item, no two items' boxes overlapping, all within the window. */
async function assertCodesLaidOut(page: Page, name: string): Promise<void> {
  const items = page.locator("#recovery-codes li");
  assert.equal(await items.count(), 10, name);
  const width = page.viewportSize()!.width;
  const boxes: Box[] = [];
  for (let i = 0; i < 10; i++) {
    const item = (await items.nth(i).boundingBox())!;
    const code = (await items.nth(i).locator("code").boundingBox())!;
    assert.ok(inside(code, item), `${name}: code ${i + 1} (${JSON.stringify(code)}) runs out of its item (${JSON.stringify(item)})`);
    assert.ok(code.x >= 0 && code.x + code.width <= width, `${name}: code ${i + 1} is cut off by the window`);
    boxes.push(item);
  }
  for (let i = 0; i < boxes.length; i++)
    for (let j = i + 1; j < boxes.length; j++) assert.ok(!overlap(boxes[i]!, boxes[j]!), `${name}: codes ${i + 1} and ${j + 1} overlap`);
  // An item's number is drawn inside its own box only when the marker is inside: outside, "10."
  // would sit in the gap before it, on the text of the column to its left.
  assert.equal(
    await page.evaluate("getComputedStyle(document.querySelector('#recovery-codes li')).listStylePosition"),
    "inside",
    `${name}: numbers inside their items`,
  );
}

/** Which of the role's Start, Restart and Stop buttons are enabled. */
async function offered(page: Page, role: string): Promise<Record<string, boolean>> {
  const out: Record<string, boolean> = {};
  for (const act of ["start", "restart", "stop"]) out[act] = await page.locator(`#sandbox-${role} button[data-action="${act}"]`).isEnabled();
  return out;
}

const RUNNING = { start: false, restart: true, stop: true };
const STOPPED = { start: true, restart: false, stop: false };

describe("a new user's walkthrough in Chromium, at desktop and phone width, light and dark", { skip }, () => {
  let t: TestDaemon;
  let browser: Browser;
  let origin: string;
  const users: string[] = [];

  before(async () => {
    mkdirSync(SHOTS, { recursive: true });
    const port = await freePort();
    origin = `http://localhost:${port}`;
    t = await bootDaemon({ env: { HYPERVISOR_LISTEN: `127.0.0.1:${port}`, HYPERVISOR_PUBLIC_ORIGIN: origin, HYPERVISOR_START_TIMEOUT_MS: "6000" } });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    for (const user of users) for (const role of ["live", "dev"] as const) await t?.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t?.close();
  });

  for (const [device, viewport] of Object.entries(WIDTHS))
    for (const colorScheme of ["light", "dark"] as const) {
      const name = `${device}-${colorScheme}`;
      it(`${name}: signs up, saves the codes, opens live and dev, starts and stops from the account page, signs out`, async () => {
        const user = testUser(`walk-${device[0]}${colorScheme[0]}`);
        users.push(user);
        const context = await browser.newContext({ viewport, colorScheme, bypassCSP: true });
        const page = await pageWithPasskeys(context);
        const errors: string[] = [];
        const violations: string[] = [];
        page.on("pageerror", (e) => errors.push(e.message));
        const look = async (step: string) => {
          await page.screenshot({ path: join(SHOTS, `${name}-${step}.png`), fullPage: true });
          await assertNoSidewaysScroll(page, `${name} ${step}`);
          violations.push(...(await seriousViolations(page, `${name} ${step}`)));
        };

        await page.goto(`${origin}/login`);
        assert.match((await page.textContent("#about")) ?? "", /passkey: a key kept by your device/, "the sign-in page says what a passkey is");
        await look("01-login");

        await page.goto(`${origin}/register`);
        await page.fill("#username", "Not A Name");
        await page.click("#register");
        assert.match((await page.textContent("#username-error")) ?? "", /lower-case letters/);
        assert.equal((await page.textContent("#status"))?.trim(), "", "the field's error is said once, under the field");
        await look("02-register-invalid");

        await page.fill("#username", user);
        await page.click("#register");
        await page.locator("#recovery-codes li").first().waitFor({ timeout: 15_000 });
        await assertCodesLaidOut(page, name);
        await look("03-recovery-codes");

        await page.click("#continue");
        await page.locator("#role").waitFor({ timeout: 30_000 });
        assert.equal((await page.textContent("#role"))?.trim(), "live");
        await page.screenshot({ path: join(SHOTS, `${name}-04-live.png`) });
        await page.goto(`${origin}/dev/`);
        await page.locator("#role", { hasText: "dev" }).waitFor({ timeout: 30_000 });
        await page.screenshot({ path: join(SHOTS, `${name}-05-dev.png`) });

        await page.goto(`${origin}/_hv/account`);
        for (const role of ["live", "dev"]) {
          assert.equal((await page.textContent(`#${role}-state`))?.trim(), "running", role);
          assert.deepEqual(await offered(page, role), RUNNING, `${role} runs: Start is not offered`);
          assert.match((await page.textContent(`#${role}-idle`)) ?? "", /^last used \d\d:\d\d UTC; if unused until then, .*stopped at/, role);
        }
        assert.match(
          (await page.textContent(".passkey-name")) ?? "",
          /^Passkey from Chrome on Linux, \d{1,2} [A-Z][a-z]{2} \d{4}$/,
          "a passkey named for where it was made",
        );
        assert.doesNotMatch((await page.textContent("main")) ?? "", /\bslots?\b/i, "no slots in what the user reads");
        await look("06-account");

        // Each action, then the state the server reports and the buttons that state offers.
        const act = async (role: string, action: string, state: string, buttons: Record<string, boolean>) => {
          await page.click(`#sandbox-${role} button[data-action="${action}"]`);
          await page.locator(`#${role}-message`, { hasText: `${role}: ${state}` }).waitFor({ timeout: 30_000 });
          // The action is over (its log read too) once its button is no longer busy.
          await page.locator(`#sandbox-${role} button[aria-busy]`).waitFor({ state: "detached", timeout: 30_000 });
          assert.equal((await page.textContent(`#${role}-state`))?.trim(), state, `${role} after ${action}`);
          assert.deepEqual(await offered(page, role), buttons, `${role}'s buttons after ${action}`);
          const reported = (await t.daemon.services.sandboxStatus.status([user])).find((s) => s.role === role)!;
          assert.equal(reported.state, state, `the page says what the runtime says after ${action}`);
        };
        await act("live", "stop", "stopped", STOPPED);
        assert.equal((await page.textContent("#live-idle"))?.trim(), "not running: opening it starts it");
        await act("dev", "stop", "stopped", STOPPED);
        await act("dev", "start", "running", RUNNING);
        await act("live", "start", "running", RUNNING);
        await act("dev", "restart", "running", RUNNING);
        await look("07-account-after-actions");

        // The log as a person reads it: text, probes folded, newest last, nothing scrolled out of view.
        const log = page.locator("#dev-logs");
        const text = (await log.textContent()) ?? "";
        assert.doesNotMatch(text, /^\{/m, "no raw JSON lines");
        assert.match(text, /^… \d+ health checks?$/m, "the probes folded");
        assert.doesNotMatch(text.split("\n").slice(-1)[0]!, /^listening/, "newest last: the restart's probes come after its start");
        const hidden = await log.evaluate((pre) => ({ v: pre.scrollHeight - pre.clientHeight, h: pre.scrollWidth - pre.clientWidth }));
        assert.ok(hidden.v <= 1 && hidden.h <= 1, `the whole log is in view: ${JSON.stringify(hidden)} px hidden`);

        await page.click("#logout");
        await page.waitForURL(/\/login$/, { timeout: 10_000 });
        await page.goto(`${origin}/dev/`);
        assert.equal(new URL(page.url()).pathname, "/login", "signed out, dev is out of reach");
        await look("08-signed-out");

        const missing = await page.goto(`${origin}/_hv/no-such-page`);
        assert.equal(missing?.status(), 404);
        assert.equal(await page.locator("#retry").count(), 0, "no 'Try again' on a page that would only refuse again");
        await look("09-error-404");
        const bad = await page.goto(`${origin}/_hv/launch?role=prod`);
        assert.equal(bad?.status(), 400);
        assert.equal(await page.locator("#retry").count(), 0);
        await look("10-error-400");

        assert.deepEqual(violations, [], "no serious or critical axe finding on any page");
        assert.deepEqual(errors, [], "no script errors");
        await context.close();
      });
    }

  it("shows the starting page, its failure and the recovery page without serious axe findings, in both widths and schemes; a start that fails from the account page", async () => {
    const user = testUser("walk-start");
    users.push(user);
    const added = await t.operator.post<{ generation: { id: number } }>("/generations", NEVER_HEALTHY);
    assert.equal(added.status, 201, JSON.stringify(added.body));
    const context = await browser.newContext({ bypassCSP: true });
    const page = await pageWithPasskeys(context);
    await page.goto(`${origin}/register`);
    await page.fill("#username", user);
    await page.click("#register");
    await page.locator("#continue").waitFor({ timeout: 15_000 });
    await t.operator.post("/deploy", { generation: added.body.generation.id, users: [user] });
    const violations: string[] = [];
    for (const [device, viewport] of Object.entries(WIDTHS))
      for (const colorScheme of ["light", "dark"] as const) {
        const name = `${device}-${colorScheme}`;
        await page.setViewportSize(viewport);
        await page.emulateMedia({ colorScheme });
        const starting = await page.goto(`${origin}/dev/`);
        assert.equal(starting?.status(), 503, name);
        violations.push(...(await seriousViolations(page, `${name} starting`)));
        await page.screenshot({ path: join(SHOTS, `${name}-11-starting.png`), fullPage: true });
        await page.locator("#start-failure:not([hidden])").waitFor({ timeout: 30_000 });
        violations.push(...(await seriousViolations(page, `${name} start failed`)));
        await assertNoSidewaysScroll(page, `${name} start failed`);
        await page.goto(`${origin}/recovery`);
        violations.push(...(await seriousViolations(page, `${name} recovery`)));
        await assertNoSidewaysScroll(page, `${name} recovery`);
      }

    // A start that fails from the account page: the error is said, and the buttons follow the
    // state the server reports afterwards, not the one the click hoped for.
    await page.goto(`${origin}/_hv/account`);
    const before = (await t.daemon.services.sandboxStatus.status([user])).find((s) => s.role === "dev")!.state;
    const button = before === "stopped" || before === "not started" ? "start" : "restart";
    await page.click(`#sandbox-dev button[data-action="${button}"]`);
    await page.locator("#dev-message.error").waitFor({ timeout: 30_000 });
    await page.locator("#sandbox-dev button[aria-busy]").waitFor({ state: "detached", timeout: 30_000 });
    assert.match((await page.textContent("#dev-message")) ?? "", /did not become healthy/);
    const after = (await t.daemon.services.sandboxStatus.status([user])).find((s) => s.role === "dev")!.state;
    assert.equal((await page.textContent("#dev-state"))?.trim(), after, "the state the server reports after the failure");
    assert.deepEqual(await offered(page, "dev"), after === "running" || after === "frozen" ? RUNNING : STOPPED, `the buttons of a ${after} sandbox`);
    violations.push(...(await seriousViolations(page, "account after a failed start")));

    assert.deepEqual(violations, [], "no serious or critical axe finding");
    await context.close();
  });
});

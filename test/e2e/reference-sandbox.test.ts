import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdirSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { createRequire } from "node:module";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { browserSkipReason, launchBrowser, pageWithPasskeys, registerInBrowser } from "../helpers/browser.js";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { repoRoot } from "../helpers/paths.js";
import { freePort } from "../helpers/ports.js";
import { testUser } from "../helpers/run-id.js";

const skip = browserSkipReason();
const SHOTS = join(repoRoot, "test-results", "reference-sandbox");
const AXE = createRequire(import.meta.url).resolve("axe-core/axe.min.js");
const WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"];
const WIDTHS = [1280, 390] as const;
const SCHEMES = ["light", "dark"] as const;

interface AxeViolation {
  id: string;
  impact: string | null;
  help: string;
  nodes: { target: string[] }[];
}

/** axe-core's serious and critical WCAG 2.1 AA findings on the page as it is now. */
async function axeFindings(page: Page): Promise<string[]> {
  if (!(await page.evaluate(() => "axe" in globalThis))) await page.addScriptTag({ path: AXE });
  const violations = await page.evaluate(async (tags) => {
    const { axe } = globalThis as unknown as { axe: { run(o: unknown): Promise<{ violations: AxeViolation[] }> } };
    return (await axe.run({ runOnly: { type: "tag", values: tags } })).violations;
  }, WCAG_21_AA);
  return violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
}

/** Nothing wider than the window (no sideways scrolling on a phone), and the boxes named do not overlap. */
async function layoutProblems(page: Page, selectors: string[]): Promise<string[]> {
  return page.evaluate((sels) => {
    const doc = (
      globalThis as unknown as {
        document: {
          documentElement: { scrollWidth: number };
          querySelector(s: string): { getBoundingClientRect(): { left: number; right: number; top: number; bottom: number; width: number } } | null;
        };
      }
    ).document;
    const width = (globalThis as unknown as { innerWidth: number }).innerWidth;
    const problems: string[] = [];
    if (doc.documentElement.scrollWidth > width) problems.push(`the page is ${doc.documentElement.scrollWidth} px wide in a ${width} px window`);
    const boxes = sels.map((s) => ({ s, r: doc.querySelector(s)?.getBoundingClientRect() }));
    for (const { s, r } of boxes) if (!r || r.width === 0) problems.push(`${s} is not shown`);
    for (let i = 0; i < boxes.length; i++)
      for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i]!.r;
        const b = boxes[j]!.r;
        if (a && b && a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) problems.push(`${boxes[i]!.s} overlaps ${boxes[j]!.s}`);
      }
    return problems;
  }, selectors);
}

describe("the reference sandbox and its starting page in a real browser", { skip }, () => {
  let t: TestDaemon;
  let browser: Browser;
  let origin: string;
  const user = testUser("refsbx");
  const other = testUser("refsbx-slow");

  before(async () => {
    mkdirSync(SHOTS, { recursive: true });
    const port = await freePort();
    origin = `http://localhost:${port}`;
    t = await bootDaemon({ env: { HYPERVISOR_LISTEN: `127.0.0.1:${port}`, HYPERVISOR_PUBLIC_ORIGIN: origin, HYPERVISOR_START_TIMEOUT_MS: "9000" } });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    // Process sandboxes outlive a daemon's close (a restart keeps them): stop each one made here.
    for (const u of [user, other]) for (const role of ["live", "dev"] as const) await t?.daemon.services.manager.stop(u, role).catch(() => undefined);
    await t?.close();
  });

  /** The injected checker needs no inline-script permission from the pages' CSP. */
  const newContext = (): Promise<BrowserContext> => browser.newContext({ bypassCSP: true });

  /** Each width and colour scheme: a screenshot, the layout check and axe-core's. */
  async function everyView(page: Page, name: string, boxes: string[], also?: () => Promise<void>): Promise<string[]> {
    const found: string[] = [];
    for (const width of WIDTHS)
      for (const colorScheme of SCHEMES) {
        await page.setViewportSize({ width, height: 900 });
        await page.emulateMedia({ colorScheme });
        await page.screenshot({ path: join(SHOTS, `${name}-${width}-${colorScheme}.png`), fullPage: true });
        for (const p of await layoutProblems(page, boxes)) found.push(`${name} ${width} px ${colorScheme}: ${p}`);
        for (const v of await axeFindings(page)) found.push(`${name} ${width} px ${colorScheme}: ${v}`);
        await also?.();
      }
    await page.emulateMedia({ colorScheme: "light" });
    await page.setViewportSize({ width: 1280, height: 900 });
    return found;
  }

  it("shows live and dev apart, each with its own data, a way to the account page and out, and says it has no egress routes", async () => {
    const context = await newContext();
    const page = await pageWithPasskeys(context);
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await registerInBrowser(page, origin, user);

    await page.goto(`${origin}/`);
    await page.locator("#role-band").waitFor({ timeout: 25_000 });
    assert.equal(await page.getAttribute("html", "data-role"), "live");
    assert.equal((await page.textContent("#role-label"))?.trim(), "Live");
    assert.equal((await page.textContent("h1"))?.trim(), "Your live sandbox");
    assert.equal(await page.getAttribute("#hv-account", "href"), `${origin}/_hv/account`, "from HYPERVISOR_ACCOUNT_URL");
    assert.equal(await page.getAttribute("#hv-sign-out", "href"), `${origin}/_hv/account#logout`);
    assert.doesNotMatch(await page.innerText("body"), /\bslot\b/i, "no slot jargon");
    assert.match((await page.textContent("#egress-status")) ?? "", /no egress gateway.*HYPERVISOR_EGRESS=none or open/);
    assert.equal(await page.locator("#egress-form").count(), 0);

    await page.click("#counter-add");
    await page.locator("#data-counter", { hasText: "1" }).waitFor();
    await page.click("#counter-add");
    await page.locator("#data-counter", { hasText: "2" }).waitFor();
    await page.fill("#task-input", "hello live");
    await page.click("#task-run");
    await page.locator("#task-result", { hasText: "HELLO LIVE" }).waitFor({ timeout: 10_000 });
    await page.locator("#task-count", { hasText: "1" }).waitFor();
    const liveBand = await page.evaluate(() => {
      const g = globalThis as unknown as { getComputedStyle(e: unknown): { backgroundColor: string }; document: { querySelector(s: string): unknown } };
      return g.getComputedStyle(g.document.querySelector("header")).backgroundColor;
    });
    const problems = await everyView(page, "live", ["#role-band", "header nav", "#counter-add", "#task-run", "#task-input"]);

    await page.goto(`${origin}/dev/`);
    await page.locator("html[data-role='dev'] #role-band").waitFor({ timeout: 25_000 });
    assert.equal((await page.textContent("#role-label"))?.trim(), "Dev");
    assert.equal((await page.textContent("#data-counter"))?.trim(), "0", "dev runs on its own data, not live's");
    const devBand = await page.evaluate(() => {
      const g = globalThis as unknown as { getComputedStyle(e: unknown): { backgroundColor: string }; document: { querySelector(s: string): unknown } };
      return g.getComputedStyle(g.document.querySelector("header")).backgroundColor;
    });
    assert.notEqual(devBand, liveBand, "live and dev look different at a glance");
    problems.push(...(await everyView(page, "dev", ["#role-band", "header nav", "#counter-add", "#task-run", "#task-input"])));

    await page.click("#hv-account");
    await page.waitForURL(`${origin}/_hv/account`);
    await page.goto(`${origin}/`);
    await page.locator("#data-counter", { hasText: "2" }).waitFor({ timeout: 10_000 });
    assert.deepEqual(problems, [], "no overlap, no sideways scrolling, no serious or critical axe finding");
    assert.deepEqual(errors, [], "no script errors");
    await context.close();
  });

  it("streams a slow start's steps with times and what /health last answered, then why it failed, or the sandbox once healthy", async () => {
    const added = await t.operator.post<{ generation: { id: number } }>("/generations", {
      command: [process.execPath, join(repoRoot, "dist/sandbox/server.js"), "--fail-health", "--version=failing"],
      version: "failing",
    });
    assert.equal(added.status, 201, JSON.stringify(added.body));
    const { routing, manager } = t.daemon.services;

    const context = await newContext();
    const page = await pageWithPasskeys(context);
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    // A user of its own, whose dev slot is given the generation that never becomes healthy.
    await registerInBrowser(page, origin, other);
    await manager.assignGeneration(other, routing.slotOf(other, "dev"), added.body.generation.id);

    await page.goto(`${origin}/dev/`);
    assert.match((await page.textContent("#start-title")) ?? "", /Starting your dev sandbox/);
    await page.locator("#start-health:not([hidden])").waitFor({ timeout: 10_000 });
    assert.match((await page.textContent("#start-health")) ?? "", /GET \/health\) last answered: HTTP 503: \{"status":"failing"\}/);
    const steps = (await page.locator("#start-steps li").allTextContents()).map((s) => s.trim());
    assert.deepEqual(
      steps.map((s) => s.replace(/ \(at \d+\.\d s\)$/, "")),
      ["Making its container", "Starting it", "Waiting for it to answer its health check"],
      `the steps with their times: ${JSON.stringify(steps)}`,
    );
    assert.equal(await page.getAttribute("#start-steps li:last-child", "aria-current"), "step");
    const problems = await everyView(page, "starting-slow", ["#start-title", "#start-steps", "#start-health", "#to-account"]);

    await page.locator("#start-failure:not([hidden])").waitFor({ timeout: 15_000 });
    assert.match((await page.textContent("#start-failure")) ?? "", /last answered: HTTP 503/);
    assert.equal(await page.isHidden("#start-steps"), true);
    problems.push(...(await everyView(page, "starting-failed", ["#start-title", "#start-failure", "#to-account"])));

    // Slow, then healthy: live listens only after 5 s; the page says what /health answered meanwhile, then opens it.
    const slow = await t.operator.post<{ generation: { id: number } }>("/generations", {
      command: [process.execPath, join(repoRoot, "dist/sandbox/server.js"), "--slow-start-ms=5000", "--version=slow"],
      version: "slow",
    });
    assert.equal(slow.status, 201, JSON.stringify(slow.body));
    await manager.stop(other, "live");
    await manager.assignGeneration(other, routing.slotOf(other, "live"), slow.body.generation.id);
    await page.goto(`${origin}/`);
    assert.match((await page.textContent("#start-title")) ?? "", /Starting your live sandbox/);
    await page.locator("#start-health:not([hidden])").waitFor({ timeout: 10_000 });
    assert.match((await page.textContent("#start-health")) ?? "", /last answered: connection refused \(nothing listens on its port yet\)/);
    await page.locator("html[data-role='live'] #role-band").waitFor({ timeout: 15_000 });
    assert.equal((await page.textContent("#version"))?.trim(), "slow", "the page reloaded by itself into the sandbox once healthy");
    assert.deepEqual(problems, []);
    assert.deepEqual(errors, []);
    await context.close();
  });

  it("lists the egress routes and shows a call's answer or the gateway's refusal; says so when no route is configured", async () => {
    // The gateway's side is the egress routes test's; here the page's, against a stand-in that answers as the gateway does.
    const routes: string[] = ["echo"];
    const gateway = createServer((req, res) => {
      const reply = (status: number, body: unknown) => {
        res.writeHead(status, { "content-type": "application/json" });
        res.end(JSON.stringify(body));
      };
      if (req.url === "/") return reply(200, { routes });
      if (req.url?.startsWith("/echo/limited"))
        return reply(429, { error: { code: "rate_limited", message: "route echo: 60 requests a minute", requestId: "r" } });
      if (req.url?.startsWith("/echo/")) return reply(200, { path: req.url, authorization: "Bearer ****" });
      reply(404, { error: { code: "not_found", message: "no egress route; the routes are echo", requestId: "r" } });
    });
    await new Promise<void>((resolve) => gateway.listen(0, "127.0.0.1", resolve));
    const data = tempDir("hv-refsbx-egress-");
    const sandbox = spawn(process.execPath, [join(repoRoot, "dist/sandbox/server.js")], {
      env: {
        PATH: process.env.PATH,
        PORT: "0",
        DATA_DIR: data.path,
        HYPERVISOR_EGRESS_URL: `http://127.0.0.1:${(gateway.address() as AddressInfo).port}`,
        HYPERVISOR_EGRESS_TOKEN: "tok",
      },
      stdio: ["ignore", "pipe", "inherit"],
    });
    const context = await newContext();
    try {
      const [line] = (await once(sandbox.stdout!, "data")) as [Buffer];
      const base = `http://127.0.0.1:${(JSON.parse(line.toString().split("\n")[0]!) as { port: number }).port}/`;
      const page = await context.newPage();
      const errors: string[] = [];
      page.on("pageerror", (e) => errors.push(e.message));
      await page.goto(base);
      await page.locator("#egress-form:not([hidden])").waitFor();
      assert.equal((await page.textContent("#egress-status"))?.trim(), "One route: echo.");
      assert.deepEqual(await page.locator("#egress-route option").allTextContents(), ["echo"]);
      await page.fill("#egress-path", "/v1/models?limit=1");
      await page.click("#egress-call");
      await page.locator("#egress-answer:not([hidden])").waitFor();
      assert.equal((await page.textContent("#egress-status"))?.trim(), "echo answered HTTP 200.");
      assert.equal((await page.textContent("#egress-answer-status"))?.trim(), "HTTP 200 · application/json");
      assert.deepEqual(JSON.parse((await page.textContent("#egress-answer-body")) ?? ""), { path: "/echo/v1/models?limit=1", authorization: "Bearer ****" });
      const problems = await everyView(page, "egress-answer", ["#egress-route", "#egress-path", "#egress-call", "#egress-answer-body"]);

      await page.setViewportSize({ width: 390, height: 900 });
      const field = await page.locator("#egress-path").boundingBox();
      const button = await page.locator("#egress-call").boundingBox();
      assert.ok(field && button && field.height <= button.height * 1.5, `the path field stays one line high on a phone: ${JSON.stringify(field)}`);
      await page.setViewportSize({ width: 1280, height: 900 });
      await page.fill("#egress-path", "/limited");
      await page.click("#egress-call");
      await page.locator("#egress-status.error").waitFor();
      assert.equal((await page.textContent("#egress-status"))?.trim(), "echo answered HTTP 429: route echo: 60 requests a minute");

      routes.length = 0;
      await page.reload();
      await page.locator("#egress-status", { hasText: "no egress routes" }).waitFor();
      assert.equal(
        (await page.textContent("#egress-status"))?.trim(),
        "The operator has configured no egress routes, so there is no outside service to call yet.",
      );
      assert.equal(await page.isHidden("#egress-form"), true);
      problems.push(...(await everyView(page, "egress-none", ["#egress-status", "#role-band"])));
      assert.deepEqual(problems, []);
      assert.deepEqual(errors, []);
    } finally {
      await context.close();
      sandbox.kill("SIGKILL");
      gateway.closeAllConnections();
      gateway.close();
      data.remove();
    }
  });
});

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Browser } from "playwright-core";
import { referenceSandboxCommand } from "../../hypervisor/generations/default-generation.js";
import { browserSkipReason, launchBrowser, pageWithPasskeys, registerInBrowser } from "../helpers/browser.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { freePort } from "../helpers/ports.js";
import { testUser } from "../helpers/run-id.js";
import { baseUrl } from "../helpers/sandbox-client.js";

const skip = browserSkipReason();
const sandbox = referenceSandboxCommand();

describe("promote from the account page in a real browser: the confirmation says what happens to which data, then a passkey", { skip }, () => {
  let t: TestDaemon;
  let browser: Browser;
  let url: string;
  const user = testUser("page-promote");

  before(async () => {
    const port = await freePort();
    url = `http://localhost:${port}`;
    t = await bootDaemon({ env: { HYPERVISOR_LISTEN: `127.0.0.1:${port}`, HYPERVISOR_PUBLIC_ORIGIN: url, HYPERVISOR_START_TIMEOUT_MS: "8000" } });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    for (const role of ["live", "dev"] as const) await t?.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t?.close();
  });

  it("promotes dev's generation onto live's data after the dialog and a step-up, and lists the pre-promote snapshot", async () => {
    const context = await browser.newContext();
    const page = await pageWithPasskeys(context);
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await registerInBrowser(page, url, user);

    const { endpoint } = await t.daemon.services.manager.ensure(user, "live");
    for (let i = 0; i < 3; i++) await fetch(`${baseUrl(endpoint)}/counter`, { method: "POST" });
    const g1 = t.daemon.services.routing.generationOf(user, "live");
    const g2 = (
      await t.operator.post("/generations", { command: [...sandbox.command.filter((a) => !a.startsWith("--version=")), "--version=2"], version: "2" })
    ).body.generation.id as number;
    assert.equal((await t.operator.post("/deploy", { generation: g2, users: [user] })).status, 200);

    await page.goto(`${url}/_hv/account`);
    assert.equal((await page.textContent("#data-live-generation"))?.trim(), `#${g1}`);
    assert.equal((await page.textContent("#data-dev-generation"))?.trim(), `#${g2}`);
    assert.equal(await page.locator("#no-snapshots").count(), 1);

    // Cancelled: nothing happens.
    await page.click("#data-promote");
    await page.locator("#confirm-dialog[open]").waitFor();
    assert.match((await page.textContent("#confirm-text")) ?? "", /on live's own data/);
    assert.match((await page.textContent("#confirm-text")) ?? "", /saved as a snapshot first/);
    await page.click("#confirm-cancel");
    await page.locator("#data-message", { hasText: "Nothing was changed" }).waitFor();
    assert.equal(t.daemon.services.routing.generationOf(user, "live"), g1);

    await page.click("#data-promote");
    await page.locator("#confirm-dialog[open]").waitFor();
    await Promise.all([page.waitForEvent("load", { timeout: 30_000 }), page.click("#confirm-ok")]);
    await page.locator("#data-live-generation").waitFor();
    assert.equal((await page.textContent("#data-live-generation"))?.trim(), `#${g2}`);
    assert.match((await page.textContent("#snapshots")) ?? "", /live's data before a promote/);

    await page.goto(`${url}/counter`);
    assert.deepEqual(JSON.parse((await page.textContent("body")) ?? ""), { count: 3 });
    assert.deepEqual(errors, []);
    await context.close();
  });
});

import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, request } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Browser } from "playwright-core";
import { browserSkipReason, launchBrowser, pageWithPasskeys, registerInBrowser } from "../helpers/browser.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { freePort } from "../helpers/ports.js";
import { testUser } from "../helpers/run-id.js";

const skip = browserSkipReason();
const KEY = "sk-mine-4f1e9d2c7b6a5e8f3d0c1b2a9e8d7c6b";

describe("a user's own egress key on the account page", { skip }, () => {
  let t: TestDaemon;
  let browser: Browser;
  let origin: string;
  let dir: string;
  const user = testUser("egresskey");

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "hv-egress-keys-"));
    // An upstream on a port just freed: a call is admitted and counted, then refused by the kernel.
    const upstream = `https://127.0.0.1:${await freePort()}`;
    writeFileSync(
      join(dir, "routes.json"),
      JSON.stringify([{ name: "provider", upstream, header: "authorization", value: "Bearer {secret}", secret: "provider", userKeys: true }]),
    );
    writeFileSync(join(dir, "secrets-key"), "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928");
    const port = await freePort();
    origin = `http://localhost:${port}`;
    t = await bootDaemon({
      env: {
        HYPERVISOR_LISTEN: `127.0.0.1:${port}`,
        HYPERVISOR_PUBLIC_ORIGIN: origin,
        HYPERVISOR_EGRESS_ROUTES_FILE: join(dir, "routes.json"),
        HYPERVISOR_EGRESS_SECRETS_KEY_FILE: join(dir, "secrets-key"),
      },
    });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await t?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("stores a key after a step-up, shows only its last four characters, and removes it", async () => {
    const context = await browser.newContext();
    const page = await pageWithPasskeys(context);
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await registerInBrowser(page, origin, user);

    await page.goto(`${origin}/_hv/account`);
    assert.equal((await page.textContent("#egress-key-provider"))?.trim(), "the operator's key");
    await page.fill("#egress-key-input-provider", KEY);
    await page.click('form[data-egress-form="provider"] button[type=submit]');
    await page.locator("#egress-key-provider", { hasText: `ending in ${KEY.slice(-4)}` }).waitFor({ timeout: 15_000 });
    const html = await page.content();
    assert.ok(!html.includes(KEY.slice(0, -4)), "the page never shows more than the last four characters");
    const egress = t.daemon.services.egressCredentials;
    assert.equal(egress.userKeys.keyFor(user, "provider"), KEY, "stored, for this user's route calls");
    const setRow = t.daemon.services.audit.list({ limit: 50 }).find((e) => e.action === "egress.user-key.set" && e.target === user);
    assert.equal(setRow?.outcome, "ok", "the change is audited");

    // A call of one of the user's sandboxes, handed to the route handler as the gateway would: the page shows it in today's use.
    const gateway = createServer((req, res) => egress.handleRoute(req, res, { user, slot: "a", generation: 1 }));
    await new Promise<void>((resolve) => gateway.listen(0, "127.0.0.1", resolve));
    const status = await new Promise<number>((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port: (gateway.address() as AddressInfo).port, path: "/provider/v1/models" }, (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode ?? 0));
      });
      req.on("error", reject);
      req.end();
    });
    gateway.close();
    assert.equal(status, 502, "the upstream was not there");
    await page.reload();
    const usage = page.locator("#egress-usage tbody tr", { hasText: "route:provider" });
    assert.deepEqual((await usage.locator("td").allTextContents()).slice(0, 2), ["route:provider", "1"], "the user sees their own use today");

    // Without a step-up the server refuses, whatever the page does.
    const refused = await page.evaluate(async () => {
      const res = await fetch("/auth/egress-keys/provider", {
        method: "PUT",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ key: "sk-no-step-up-123" }),
      });
      return { status: res.status, body: (await res.json()) as { error: { code: string } } };
    });
    assert.deepEqual([refused.status, refused.body.error.code], [403, "step_up_required"]);
    assert.equal(egress.userKeys.keyFor(user, "provider"), KEY, "unchanged");

    await page.click('button[data-egress-remove="provider"]');
    await page.click("#confirm-ok");
    await page.locator("#egress-key-provider", { hasText: "the operator's key" }).waitFor({ timeout: 15_000 });
    assert.equal(egress.userKeys.keyFor(user, "provider"), undefined, "removed");
    assert.deepEqual(errors, []);
    await context.close();

    // The key was encrypted at rest: its bytes are nowhere in the database files.
    t.daemon.services.db.pragma("wal_checkpoint(TRUNCATE)");
    for (const f of ["hypervisor.db", "hypervisor.db-wal"]) {
      let bytes: Buffer;
      try {
        bytes = readFileSync(join(t.stateDir, f));
      } catch {
        continue;
      }
      assert.ok(!bytes.includes(KEY), `${f} holds no key`);
    }
  });
});

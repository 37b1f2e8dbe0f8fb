import { spawnSync } from "node:child_process";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";

const CHROMIUM = "/usr/bin/chromium";

/**
 * Browser suites need Debian's chromium. In CI a missing one is a failure, never a silent
 * skip; elsewhere the suite is skipped with the reason. A test never downloads a browser.
 */
export function browserSkipReason(): string | false {
  if (spawnSync(CHROMIUM, ["--version"], { stdio: "ignore" }).status === 0) return false;
  if (process.env.CI === "true") throw new Error("chromium is not installed, and CI=true requires the browser suites to run");
  return "chromium is not installed (apt-get install chromium)";
}

/** `extraArgs`: e.g. a host resolver rule and a trusted certificate for a site that is not on loopback. */
export async function launchBrowser(extraArgs: readonly string[] = []): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // DESIGN.md §9: no sandbox as root, and nothing that reaches for the (closed) network.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      ...extraArgs,
    ],
  });
}

/** A page with a CDP virtual authenticator that holds resident keys and verifies the user. */
export async function pageWithPasskeys(context: BrowserContext): Promise<Page> {
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  return page;
}

/** Signs `name` up on the register page, as a person would, and waits for the recovery codes it shows. */
export async function registerInBrowser(page: Page, origin: string, name: string): Promise<void> {
  await page.goto(`${origin}/register`);
  await page.fill("#username", name);
  await page.click("#register");
  await page.locator("#recovery-codes li").first().waitFor({ timeout: 15_000 });
}

// The gates of a first start: the service through its socket units, a user registered in
// Chromium from outside the box on live and dev, and where a sandbox's lines go.
import type { BrowserContext, Page } from "playwright-core";
import { pageWithPasskeys } from "../helpers/browser.js";
import { boxStep, ORIGIN_HOST, SANDBOX_DOMAIN, type Context } from "./context.js";
import { seconds } from "./report.js";

export async function socketStart(ctx: Context): Promise<void> {
  await boxStep(
    ctx,
    "systemctl stop hypervisor.service && systemctl is-active hypervisor.socket hypervisor-operator.socket && ! systemctl is-active hypervisor.service",
  );
  // The first connection to the held listener starts the service (socket activation).
  await boxStep(ctx, "curl -fsS --max-time 60 http://127.0.0.1:8080/_hv/readyz");
  await boxStep(ctx, "systemctl is-active hypervisor.service");
  await boxStep(ctx, "systemctl status hypervisor.service hypervisor.socket hypervisor-operator.socket --no-pager --lines=0", { lines: 40 });
  const journal = await boxStep(ctx, "journalctl -u hypervisor -b --no-pager -o cat | tail -n 12", { lines: 12 });
  const started = journal.split("\n").filter((l) => l.includes("hypervisor started"));
  if (!started.length) throw new Error('no "hypervisor started" line in journalctl -u hypervisor');
  const last = JSON.parse(started[started.length - 1]!) as { socketActivated?: string[] };
  if (JSON.stringify([...(last.socketActivated ?? [])].sort()) !== JSON.stringify(["operator", "public"]))
    throw new Error(`the daemon was not socket-activated: ${started[started.length - 1]}`);
  await boxStep(ctx, "hypervisorctl status");
}

export async function browserUser(ctx: Context): Promise<void> {
  const origin = `https://${ORIGIN_HOST}`;
  const context = await ctx.browser!.newContext();
  const page = await pageWithPasskeys(context);
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  // What the browser saw, for the report when a step fails.
  const seen: string[] = [];
  page.on("console", (m) => seen.push(`console ${m.type()}: ${m.text()}`));
  page.on("response", (r) => r.status() >= 400 && seen.push(`${r.status()} ${r.request().method()} ${r.url()}`));
  page.on("requestfailed", (r) => seen.push(`failed ${r.url()}: ${r.failure()?.errorText}`));
  const started = performance.now();
  await page.goto(`${origin}/register`);
  await page.fill("#username", ctx.user);
  await page.click("#register");
  try {
    await page.locator("#continue").waitFor({ timeout: 30_000 });
    await reachSandboxes(ctx, page, context, started);
  } catch (err) {
    const status = await page.textContent("#status").catch(() => null);
    const body = (await page.textContent("body").catch(() => ""))?.replace(/\s+/g, " ").slice(0, 600);
    // What the box says about the user's sandboxes, for the report.
    await boxStep(
      ctx,
      `podman ps --all --format '{{.Names}} {{.Status}}'; for c in $(podman ps --all --format '{{.Names}}' | grep -- '-${ctx.user}-'); do journalctl CONTAINER_NAME=$c --no-pager -o cat | tail -n 15; podman inspect --format '{{.State.ExitCode}} {{.State.Error}}' $c; done; journalctl -u hypervisor -b --no-pager -o cat | tail -n 8`,
      { allowFail: true, lines: 60 },
    ).catch(() => undefined);
    throw new Error(
      `${(err as Error).message.split("\n")[0]} at ${page.url()}; #status ${JSON.stringify(status)}; the page: ${body}; the browser saw:\n${seen.join("\n")}`,
    );
  }
  if (errors.length) throw new Error(`script errors: ${errors.join("; ")}`);
  await context.close();
  await boxStep(ctx, "hypervisorctl users list && hypervisorctl sandboxes");
}

async function reachSandboxes(ctx: Context, page: Page, context: BrowserContext, started: number): Promise<void> {
  const origin = `https://${ORIGIN_HOST}`;
  const liveOrigin = `https://live-${ctx.user}.${SANDBOX_DOMAIN}`;
  const devOrigin = `https://dev-${ctx.user}.${SANDBOX_DOMAIN}`;
  await page.click("#continue");
  await page.waitForURL(`${liveOrigin}/`, { timeout: 60_000 });
  await page.locator("#role").waitFor({ timeout: 60_000 });
  const live = (await page.textContent("#role"))?.trim();
  ctx.report.note(
    `Registered \`${ctx.user}\` with a passkey at ${origin}/register; live at ${liveOrigin}/ shows role **${live}** (${seconds(performance.now() - started)}, the first start included).`,
  );
  if (live !== "live") throw new Error(`the live page shows role ${live}`);
  await page.goto(`${origin}/_hv/account`);
  await page.click("#open-dev");
  await page.waitForURL(`${devOrigin}/`, { timeout: 60_000 });
  await page.locator("#role").waitFor({ timeout: 60_000 });
  const dev = (await page.textContent("#role"))?.trim();
  if (dev !== "dev") throw new Error(`the dev page shows role ${dev}`);
  await page.fill("#task-input", "hello from the rehearsal");
  await page.click("#task-run");
  await page.locator("#task-result", { hasText: "HELLO FROM THE REHEARSAL" }).waitFor({ timeout: 30_000 });
  ctx.report.note(`Dev at ${devOrigin}/ shows role **${dev}**, and a task over its WebSocket answered.`);
  const cookies = await context.cookies();
  const cookieFor = (host: string) =>
    cookies
      .filter((c) => c.domain === host)
      .map((c) => `${c.name}=${c.value}`)
      .join("; ");
  ctx.cookies = { live: cookieFor(`live-${ctx.user}.${SANDBOX_DOMAIN}`), dev: cookieFor(`dev-${ctx.user}.${SANDBOX_DOMAIN}`) };
  if (!ctx.cookies.live || !ctx.cookies.dev) throw new Error("no sandbox cookies in the browser");
}

export async function sandboxLines(ctx: Context): Promise<void> {
  await boxStep(ctx, "podman ps --all --format '{{.Names}} {{.Status}} {{.Image}}'");
  const names = (await boxStep(ctx, `podman ps --format '{{.Names}}' | grep -- '-${ctx.user}-'`)).trim().split("\n");
  for (const name of names) {
    const lines = await boxStep(ctx, `journalctl CONTAINER_NAME=${name} --no-pager -o cat | tail -n 5`, { lines: 5 });
    if (!lines.trim()) throw new Error(`journalctl CONTAINER_NAME=${name} shows nothing`);
  }
  await boxStep(ctx, `hypervisorctl logs ${ctx.user} live --tail 3`, { lines: 5 });
  await boxStep(ctx, `journalctl -u hypervisor -b --no-pager -o cat | grep -E '"(user)":"${ctx.user}"' | tail -n 6`, { lines: 6 });
}

/**
 * Egress as the unit enforces it on Podman 5 (netavark): from inside the user's live sandbox,
 * the gateway answers (a host not allowed is refused by it, 403), and a direct connection out of
 * the box (to the rehearsal's own proxy, which the box itself may use) gets nowhere.
 */
export async function sandboxEgress(ctx: Context): Promise<void> {
  const name = (await boxStep(ctx, `podman ps --format '{{.Names}}' | grep -- '-${ctx.user}-' | head -n 1`)).trim();
  if (!name) throw new Error(`no running sandbox of ${ctx.user}`);
  // Node inside the sandbox: what its code would do, with the proxy variables the hypervisor gave it.
  const viaGateway = [
    "const u = new URL(process.env.HTTPS_PROXY);",
    "const auth = Buffer.from(decodeURIComponent(u.username) + ':' + decodeURIComponent(u.password)).toString('base64');",
    "const r = require('http').request({ host: u.hostname, port: u.port, method: 'CONNECT', path: 'not-allowed.example.org:443', headers: { 'proxy-authorization': 'Basic ' + auth }, timeout: 10000 });",
    "r.on('connect', (res) => { console.log('gateway answered ' + res.statusCode); process.exit(0); });",
    "r.on('timeout', () => { console.log('gateway timeout'); process.exit(0); });",
    "r.on('error', (e) => { console.log('gateway error ' + e.code); process.exit(0); });",
    "r.end();",
  ].join(" ");
  const gateway = await boxStep(ctx, `podman exec ${name} node -e "${viaGateway}"`);
  if (!/gateway answered 403/.test(gateway)) throw new Error(`the gateway did not refuse a host not allowed: ${gateway.trim()}`);
  const proxy = new URL(ctx.proxy.url);
  const direct = [
    `const s = require('net').connect({ host: '${proxy.hostname}', port: ${proxy.port}, timeout: 3000 });`,
    "s.on('connect', () => { console.log('direct connected'); process.exit(0); });",
    "s.on('timeout', () => { console.log('direct timeout'); process.exit(0); });",
    "s.on('error', (e) => { console.log('direct error ' + e.code); process.exit(0); });",
  ].join(" ");
  const out = await boxStep(ctx, `podman exec ${name} node -e "${direct}"`);
  if (!/direct (timeout|error)/.test(out)) throw new Error(`a sandbox connected out of the box directly: ${out.trim()}`);
}

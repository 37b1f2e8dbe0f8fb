// `npm run rehearsal`: deploy/RUNBOOK.md rehearsed on a Debian 13 machine booted with systemd in
// a box (test/host/box.ts), from stage 1 to the rollbacks, with the evidence written to a report.
// Needs root, debootstrap and systemd-nspawn (scripts/install-deps.sh), and Debian's mirror and the
// npm registry reachable from this host (nothing else is downloaded). Exits 0 when every gate passed.
import { createHash, randomBytes } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { launchBrowser, pageWithPasskeys } from "../helpers/browser.js";
import { repoRoot } from "../helpers/paths.js";
import { ReconnectingSocket } from "../helpers/ws-client.js";
import { Box, boxImage, CACHE_DIR, debianMirror } from "./box.js";
import { startEgressProxy, summarize, type EgressProxy } from "./egress-proxy.js";
import { Report, seconds, type Gate } from "./report.js";
import { blocksOf, blocksOfSection, readRunbook, aptPackages, type Block } from "./runbook.js";
import { log, must, run, tail } from "./run.js";
import { runBlock, type BlockRun, type Deviation } from "./stages.js";
import { get, HttpsLoop, wsOptions, type Endpoint, type Sample } from "./traffic.js";

const REPORT = resolve(process.env.HYPERVISOR_REHEARSAL_REPORT ?? join(repoRoot, "var/rehearsal/report.md"));
const RESTARTS = 10;
/** The runbook's example names: its nginx site and hypervisor.env serve these. */
const ORIGIN_HOST = "sandbox.example.org";
const SANDBOX_DOMAIN = "sandboxes.example.org";
const REPOSITORY = "/srv/hypervisor.git";
/** Where the box sees the npm cache of the lockfile's tarballs. */
const NPM_CACHE = "/var/cache/npm-lockfile";
const OLD_TAG = "rehearsal-1";
const NEW_TAG = "rehearsal-2";

/**
 * Installed beyond the runbook's packages, for this machine: runc, since crun fails on its cgroup
 * v1 (DEVIATIONS), and bubblewrap, to say whether the process runtime could contain sandboxes here.
 */
const MACHINE_PACKAGES = ["runc", "bubblewrap"];

/** What this machine is not, compared to a Debian 13 host; shown, never hidden, in the report. */
const DEVIATIONS: Deviation[] = [
  {
    command: /cgroup2fs && echo "cgroup v2"/,
    why: "this machine's kernel mounts cgroup v1 (hybrid) and the box shares the host's kernel; a Debian 13 host boots with cgroup v2",
  },
  {
    command: /journalctl -u hypervisor -b \| grep -i warn/,
    why: "the daemon warns that cgroup v2 is not mounted (this machine's cgroup v1, see stage 2)",
  },
  {
    command: /\{\{\.Host\.CgroupsVersion\}\}/,
    why: "cgroup v1 from this machine's kernel (see stage 2's cgroup check)",
  },
];

interface Context {
  report: Report;
  box: Box;
  proxy: EgressProxy;
  runbook: ReturnType<typeof readRunbook>;
  env: Record<string, string>;
  endpoint: Endpoint;
  token: string;
  user: string;
  cookies: { live: string; dev: string };
  browser?: Browser;
}

async function main(): Promise<number> {
  const report = new Report();
  if (process.getuid?.() !== 0) throw new Error("the rehearsal needs root (debootstrap, systemd-nspawn, network namespaces)");
  for (const tool of ["debootstrap", "systemd-nspawn", "nsenter", "openssl", "git"]) must("sh", ["-c", `command -v ${tool}`]);
  Box.sweep();

  const runbook = readRunbook();
  const stages = ["Stage 1", "Stage 2", "Stage 3"].map((p) => blocksOf(runbook, p));
  for (const { chapter, step } of runbook.hostOnlySteps.filter((s) => /^Stage [123]/.test(s.chapter)))
    report.skippedSteps.push(`${chapter}: ${step} (host only)`);
  const mirror = debianMirror();
  const head = must("git", ["-C", repoRoot, "rev-parse", "--short", "HEAD"]).stdout.trim();
  report.fact("commit rehearsed", `${head} (tag ${OLD_TAG}; ${NEW_TAG} is it plus a commit with a schema migration, for the upgrade)`);
  report.fact(
    "host",
    `${run("uname", ["-r"]).stdout.trim()}, ${readFileSync("/etc/debian_version", "utf8").trim()}, ${run("systemd-nspawn", ["--version"]).stdout.split("\n")[0]}`,
  );

  let box: Box | undefined;
  let proxy: EgressProxy | undefined;
  let browser: Browser | undefined;
  const stop = () => {
    log("interrupted: cleaning up");
    void Promise.resolve(box?.destroy()).finally(() => process.exit(130));
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  try {
    let rootfs = "";
    const image = await report.gate("Debian 13 box image", "the node's OS: Debian 13 from Debian's archive only", async (g) => {
      const made = await boxImage([...aptPackages(stages.flat()), ...MACHINE_PACKAGES], mirror);
      rootfs = made.rootfs;
      report.note(
        `${made.built ? "Built" : "Taken from the cache"} in ${seconds(made.ms)}: debootstrap --variant=minbase trixie from ${mirror}, ` +
          `with the runbook's packages installed ahead (${made.packages.join(", ")}); cache key ${made.key}.`,
      );
      g.answers += made.built ? " (built now)" : " (cached)";
    });
    if (image.outcome !== "pass") return finish(report);

    const npm = await report.gate(
      "npm cache of the lockfile's tarballs",
      "node runbook: only code from the repository (npm ci checks each tarball's integrity)",
      async () => {
        const made = npmCache();
        report.note(
          `${made.built ? "Filled now" : "Taken from the cache"} (${seconds(made.ms)}): ${made.dir}, bound into the box at ${NPM_CACHE}, where npm runs offline.`,
        );
      },
    );
    if (npm.outcome !== "pass") return finish(report);
    box = Box.create(rootfs, [`${join(CACHE_DIR, "npm")}:${NPM_CACHE}`]);
    const repository = makeRepository(box);
    proxy = await startEgressProxy(box.network.hostAddress, [new URL(mirror).hostname, "deb.debian.org"], []);
    // The site's network, which a real host has and a box does not: apt reaches Debian's mirror
    // through the proxy, npm has the lockfile's tarballs in its cache (this machine's egress
    // re-signs TLS with its own CA, which the box must not trust), and the public names resolve
    // to the box itself.
    writeFileSync(join(box.root, "etc/apt/apt.conf.d/00rehearsal-proxy"), `Acquire::http::Proxy "${proxy.url}/";\n`);
    writeFileSync(join(box.root, "etc/hosts"), `127.0.0.1 localhost\n::1 localhost\n127.0.0.1 ${ORIGIN_HOST}\n`);
    const tls = makeCertificate(box);
    const ctx: Context = {
      report,
      box,
      proxy,
      runbook,
      env: { DEBIAN_FRONTEND: "noninteractive", npm_config_cache: NPM_CACHE, npm_config_offline: "true", npm_config_update_notifier: "false" },
      endpoint: { address: box.network.boxAddress, ca: tls.cert },
      token: randomBytes(24).toString("hex"),
      user: `rh${randomBytes(3).toString("hex")}`,
      cookies: { live: "", dev: "" },
    };
    report.fact("repository", `${repository} in the box, a clone of this checkout`);

    const booted = await report.gate("The box boots with systemd", "a Debian 13 host managed by systemd", async () => {
      const { ms, state } = await box!.boot();
      report.note(`systemd-nspawn --boot: \`systemctl is-system-running\` answered **${state}** after ${seconds(ms)}.`);
      const about = box!.exec("cat /etc/debian_version; systemctl --version | head -1; uname -r");
      report.command("cat /etc/debian_version; systemctl --version | head -1; uname -r", about.stdout, about.ms);
      report.fact("box", about.stdout.trim().split("\n").join(", "));
    });
    if (booted.outcome !== "pass") return finish(report);

    const values = { "release-tag": OLD_TAG, repository: REPOSITORY };
    const stage = async (n: number, answers: string, extra: Partial<BlockRun> = {}, requires: Gate[] = [], then?: () => Promise<void>) =>
      report.gate(
        `Runbook stage ${n}, as written`,
        answers,
        async () => {
          for (const block of stages[n - 1]!.filter((b) => !b.section.startsWith("Operator TCP")))
            await runBlock(box!, block, { values, env: ctx.env, deviations: DEVIATIONS, ...extra }, report);
          await then?.();
        },
        requires,
      );
    const s1 = await stage(1, "bootstrap stage 1 (OS baseline); node runbook: packages from Debian only, the repository at a tag");
    const s2 = await stage(2, "bootstrap stage 2 (runtime substrate): Podman", {}, [s1], async () => {
      // This machine's cgroup v1: runc instead of crun, with the line "Adding a Debian sandbox host" has for such hosts.
      const line = blocksOfSection(runbook, "Adding a Debian sandbox host")
        .flatMap((b) => b.commands)
        .find((c) => c.text.includes("containers-runc.conf"));
      if (!line) throw new Error("the runbook no longer links containers-runc.conf for cgroup v1 hosts");
      report.note("This machine's cgroup v1 (not a Debian 13 host's v2): the runbook's own line for such sandbox hosts, run here too:");
      await boxStep(ctx, line.text);
    });
    const s3 = await stage(
      3,
      "bootstrap stage 3 (application); phase 3 gate: the service starts under systemd",
      {
        standIns: {
          // certbot's DNS-01 challenge needs the site's public DNS: the rehearsal's own certificate
          // for the same names instead, at the path certbot writes, trusted by the box like a public CA.
          certbot: () => tls.install(),
        },
      },
      [s2],
    );
    const tcp = await report.gate(
      "Operator TCP listener, token pasted on tmpfs",
      "node runbook: never store credentials on the node's filesystem",
      async () => {
        for (const block of blocksOfSection(runbook, "Operator TCP")) await runBlock(box!, block, { values, env: ctx.env, input: `${ctx.token}\n` }, report);
      },
      [s3],
    );

    const service = await report.gate(
      "hypervisor starts through its socket units",
      "phase 1 and 3 gates: starts/stops/restarts; starts reliably under systemd",
      () => socketStart(ctx),
      [s3],
    );
    const user = await report.gate(
      "A user registered in Chromium reaches live and dev",
      "phase 1 and 5 gates: auth + proxy path; register/login; live and dev concurrently",
      async () => {
        browser = await launchBrowser([
          `--host-resolver-rules=MAP ${ORIGIN_HOST} ${box!.network.boxAddress}, MAP *.${SANDBOX_DOMAIN} ${box!.network.boxAddress}, EXCLUDE localhost`,
          `--ignore-certificate-errors-spki-list=${tls.spki}`,
        ]);
        ctx.browser = browser;
        await browserUser(ctx);
      },
      [service],
    );
    const sandboxLogs = await report.gate(
      "A sandbox's lines where the runbook says they go",
      "phase 1 evidence: podman ps lifecycle, logs of spawn/stop",
      () => sandboxLines(ctx),
      [user],
    );
    const restarts = await report.gate(
      `systemctl restart hypervisor ×${RESTARTS} under the user's load`,
      'runbook "Upgrading": a restart refuses no connection and fails no request',
      () => restartUnderLoad(ctx),
      [user],
    );
    // Before the reboot: the token on tmpfs is gone after it, by design.
    await report.gate("The runbook's rules hold on the running box", 'node runbook "What the system must never do"; operating rules', () => rules(ctx), [
      s3,
      tcp,
    ]);
    const reboot = await report.gate(
      "Reboot: healthy again by itself, the user served again",
      "phase 4 gate: remains healthy across reboot",
      () => rebootBox(ctx),
      [user],
    );
    const generations = await report.gate(
      "Generation rollback rehearsal: a bad generation deployed, swapped, rolled back",
      "phase 5 gate: rollback rehearsal passes; global: known-good restored in bounded time",
      () => generationRollback(ctx),
      [user],
    );
    const upgrade = await report.gate(
      "Upgrade to a newer commit and its rollback, as the runbook says",
      'runbook "Upgrading" and "Rolling back an upgrade"; node runbook: rollback by the previous release',
      () => upgradeAndBack(ctx),
      [user],
    );
    await report.gate("Process runtime: bubblewrap in the box", "phase 1 rollback: fallback to direct-process sandbox mode", () => bubblewrap(ctx), [booted]);
    void [sandboxLogs, restarts, reboot, generations, upgrade];

    const { reached, refused } = summarize(proxy.records);
    report.fact(
      "downloads",
      `${[...reached].map(([h, n]) => `${h} (${n} requests)`).join(", ") || "none"}; refused: ${refused.length ? refused.slice(0, 10).join(", ") : "none"}`,
    );
    return finish(report);
  } finally {
    await browser?.close().catch(() => undefined);
    await box?.destroy();
    await proxy?.close();
    process.removeListener("SIGINT", stop);
    process.removeListener("SIGTERM", stop);
  }
}

function finish(report: Report): number {
  report.write(REPORT);
  log(`report: ${REPORT}`);
  process.stdout.write(
    `${report.gates.map((g) => `${g.outcome === "pass" ? "✓" : g.outcome === "fail" ? "✗" : "–"} ${g.title} (${seconds(g.ms)})`).join("\n")}\nreport: ${REPORT}\n`,
  );
  return report.passed ? 0 : 1;
}

/**
 * npm's cache holding exactly what `npm ci` of this lockfile fetches (each tarball checked
 * against its integrity hash), filled on this host once per lockfile; the box's npm runs offline
 * from it.
 */
function npmCache(): { dir: string; built: boolean; ms: number } {
  const started = performance.now();
  const dir = join(CACHE_DIR, "npm");
  const lock = readFileSync(join(repoRoot, "package-lock.json"));
  const marker = join(dir, `lockfile-${createHash("sha256").update(lock).digest("hex").slice(0, 16)}`);
  if (existsSync(marker)) return { dir, built: false, ms: performance.now() - started };
  const scratch = mkdtempSync(join(tmpdir(), "hvr-npm-"));
  try {
    for (const f of ["package.json", "package-lock.json"]) copyFileSync(join(repoRoot, f), join(scratch, f));
    mkdirSync(dir, { recursive: true });
    must("npm", ["ci", "--ignore-scripts", "--no-audit", "--no-fund", "--cache", dir], { cwd: scratch, timeoutMs: 20 * 60_000 });
    writeFileSync(marker, `${new Date().toISOString()}\n`);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  return { dir, built: true, ms: performance.now() - started };
}

/**
 * The repository the box clones from: this checkout's HEAD as OLD_TAG, and NEW_TAG one commit
 * later with a new schema migration, so the upgrade migrates and its rollback restores.
 */
function makeRepository(box: Box): string {
  const work = join(box.dir, "work");
  must("git", ["clone", "--quiet", "--no-hardlinks", repoRoot, work]);
  const git = (...args: string[]) => must("git", ["-C", work, "-c", "user.name=rehearsal", "-c", "user.email=rehearsal@localhost", ...args]);
  git("tag", OLD_TAG);
  const migrations = join(work, "hypervisor/db/migrations.ts");
  const text = readFileSync(migrations, "utf8");
  const end = text.lastIndexOf("];");
  writeFileSync(
    migrations,
    `${text.slice(0, end)}  \`\n  -- The rehearsal's upgrade: a schema change, so the old release refuses the migrated database.\n  CREATE TABLE rehearsal_upgrade (id INTEGER PRIMARY KEY) STRICT;\n  \`,\n${text.slice(end)}`,
  );
  git("commit", "--quiet", "-am", "Rehearsal: a release with a schema migration");
  git("tag", NEW_TAG);
  must("git", ["clone", "--quiet", "--bare", work, join(box.root, REPOSITORY.slice(1))]);
  return REPOSITORY;
}

/** The count of schema versions a checkout's migrations.ts declares (its last version). */
function schemaVersion(box: Box, tag: string): number {
  const text = must("git", ["-C", join(box.dir, "work"), "show", `${tag}:hypervisor/db/migrations.ts`]).stdout;
  return [...text.matchAll(/^\s{2}`$/gm)].length / 2;
}

/** A certificate for the runbook's names, the stand-in for certbot's, and its SPKI hash for Chromium. */
function makeCertificate(box: Box): { cert: string; spki: string; install(): void } {
  const dir = join(box.dir, "tls");
  mkdirSync(dir);
  must("openssl", [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-days",
    "2",
    "-subj",
    `/CN=${ORIGIN_HOST}`,
    "-addext",
    `subjectAltName=DNS:${ORIGIN_HOST},DNS:*.${SANDBOX_DOMAIN}`,
    "-keyout",
    join(dir, "privkey.pem"),
    "-out",
    join(dir, "fullchain.pem"),
  ]);
  const cert = readFileSync(join(dir, "fullchain.pem"), "utf8");
  const spki = must("sh", [
    "-c",
    `openssl x509 -in ${dir}/fullchain.pem -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`,
  ]).stdout.trim();
  return {
    cert,
    spki,
    install() {
      const live = join(box.root, `etc/letsencrypt/live/${ORIGIN_HOST}`);
      mkdirSync(live, { recursive: true, mode: 0o700 });
      writeFileSync(join(live, "fullchain.pem"), cert);
      writeFileSync(join(live, "privkey.pem"), readFileSync(join(dir, "privkey.pem")), { mode: 0o600 });
      writeFileSync(join(box.root, "usr/local/share/ca-certificates/rehearsal.crt"), cert);
      const trusted = box.exec("update-ca-certificates");
      if (trusted.status !== 0) throw new Error(`update-ca-certificates: ${trusted.stdout}${trusted.stderr}`);
    },
  };
}

/** Runs a script in the box for a gate, recording it; throws when it exits non-zero. */
async function boxStep(ctx: Context, script: string, options: { allowFail?: boolean; lines?: number } = {}): Promise<string> {
  const ran = await ctx.box.execAsync(script, { env: ctx.env, timeoutMs: 10 * 60_000 });
  const output = ran.stdout + ran.stderr;
  ctx.report.command(script, output, ran.ms, ran.status, options.lines);
  if (ran.status !== 0 && !options.allowFail) throw new Error(`${script} exited ${ran.status}:\n${tail(output, 30)}`);
  return ran.stdout;
}

async function socketStart(ctx: Context): Promise<void> {
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

async function browserUser(ctx: Context): Promise<void> {
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

async function sandboxLines(ctx: Context): Promise<void> {
  await boxStep(ctx, "podman ps --all --format '{{.Names}} {{.Status}} {{.Image}}'");
  const names = (await boxStep(ctx, `podman ps --format '{{.Names}}' | grep -- '-${ctx.user}-'`)).trim().split("\n");
  for (const name of names) {
    const lines = await boxStep(ctx, `journalctl CONTAINER_NAME=${name} --no-pager -o cat | tail -n 5`, { lines: 5 });
    if (!lines.trim()) throw new Error(`journalctl CONTAINER_NAME=${name} shows nothing`);
  }
  await boxStep(ctx, `hypervisorctl logs ${ctx.user} live --tail 3`, { lines: 5 });
  await boxStep(ctx, `journalctl -u hypervisor -b --no-pager -o cat | grep -E '"(user)":"${ctx.user}"' | tail -n 6`, { lines: 6 });
}

interface Load {
  loops: HttpsLoop[];
  echo: ReconnectingSocket;
}

async function startLoad(ctx: Context): Promise<Load> {
  const live = `https://live-${ctx.user}.${SANDBOX_DOMAIN}`;
  const loops = [
    new HttpsLoop(ctx.endpoint, `${live}/whoami`, ctx.cookies.live).start(),
    new HttpsLoop(ctx.endpoint, `${live}/health`, ctx.cookies.live).start(),
  ];
  const echo = await new ReconnectingSocket(live, "/ws/echo", { cookie: ctx.cookies.live, origin: live }, wsOptions(ctx.endpoint)).start();
  return { loops, echo };
}

async function stopLoad(load: Load): Promise<{ samples: Sample[]; failed: string[] }> {
  const samples = (await Promise.all(load.loops.map((l) => l.stop()))).flat();
  await load.echo.stop();
  const failed = samples.filter((s) => s.status !== 200).map((s) => `${s.status} ${s.error ?? ""}`.trim());
  return { samples, failed };
}

async function restartUnderLoad(ctx: Context): Promise<void> {
  const load = await startLoad(ctx);
  const took: number[] = [];
  for (let i = 0; i < RESTARTS; i++) {
    await sleep(500);
    const ran = await ctx.box.execAsync("systemctl restart hypervisor.service");
    if (ran.status !== 0) throw new Error(`systemctl restart exited ${ran.status}: ${ran.stdout}${ran.stderr}`);
    took.push(ran.ms);
  }
  await sleep(1000);
  const { samples, failed } = await stopLoad(load);
  const slowest = Math.max(...samples.map((s) => s.ms));
  ctx.report.note(
    `${RESTARTS} × \`systemctl restart hypervisor.service\` (each ${took.map((t) => seconds(t)).join(", ")}) while two keep-alive HTTPS clients and one WebSocket used the live sandbox through nginx: ` +
      `**${samples.length} requests, ${failed.length} failed**, slowest ${seconds(slowest)}; WebSocket close codes ${JSON.stringify(load.echo.closeCodes)}, ${load.echo.opens} connections, ${load.echo.echoes} echoes, errors ${JSON.stringify(load.echo.errors)}.`,
  );
  await boxStep(ctx, `journalctl -u hypervisor -b --no-pager -o cat | grep -c 'hypervisor started'`);
  if (failed.length) throw new Error(`${failed.length} of ${samples.length} requests failed: ${[...new Set(failed)].slice(0, 5).join("; ")}`);
  const expected = [...Array(RESTARTS).fill(1012), 1000];
  if (JSON.stringify(load.echo.closeCodes) !== JSON.stringify(expected))
    throw new Error(`WebSocket closes ${JSON.stringify(load.echo.closeCodes)}, expected ${JSON.stringify(expected)}`);
  if (load.echo.echoes !== load.echo.opens || load.echo.errors.length)
    throw new Error(`WebSocket: ${load.echo.opens} opens, ${load.echo.echoes} echoes, errors ${load.echo.errors.join("; ")}`);
}

async function rebootBox(ctx: Context): Promise<void> {
  const started = performance.now();
  const { exitCode, downMs, bootMs, state } = await ctx.box.reboot();
  const up = performance.now();
  // Healthy by itself: nothing is started by hand, the enabled units come up with the box.
  let ready = 0;
  let served = 0;
  while (performance.now() - started < 180_000) {
    if (!ready && (await get(`https://${ORIGIN_HOST}/_hv/readyz`, { endpoint: ctx.endpoint, timeoutMs: 5000 })).status === 200) ready = performance.now();
    if (ready) {
      const r = await get(`https://live-${ctx.user}.${SANDBOX_DOMAIN}/whoami`, { endpoint: ctx.endpoint, cookie: ctx.cookies.live, timeoutMs: 60_000 });
      if (r.status === 200 && r.body.includes(ctx.user)) {
        served = performance.now();
        break;
      }
    }
    await sleep(250);
  }
  ctx.report.note(
    `\`systemctl reboot\` in the box: systemd-nspawn exited **${exitCode}** after ${seconds(downMs)} and was started again (the firmware's part); ` +
      `systemd reached **${state}** ${seconds(bootMs)} later. From \`systemctl reboot\`: /_hv/readyz 200 after ${ready ? seconds(ready - started) : "never"}, ` +
      `the user's live sandbox served again (the user's session, a cold start) after ${served ? seconds(served - started) : "never"}; boot to served ${served ? seconds(served - up) : "never"}.`,
  );
  if (!served) throw new Error("the user was not served again within 180 s of the reboot");
  await boxStep(ctx, "systemctl is-active hypervisor.socket hypervisor-operator.socket hypervisor.service podman.socket nginx");
  await boxStep(ctx, "hypervisorctl status && hypervisorctl sandboxes");
  await boxStep(ctx, "journalctl -u hypervisor -b --no-pager -o cat | grep -i warn | tail -n 5", { allowFail: true, lines: 5 });
}

async function generationRollback(ctx: Context): Promise<void> {
  const report = ctx.report;
  const values: Record<string, string> = { "release-tag": OLD_TAG, version: "2" };
  const gens = JSON.parse(await boxStep(ctx, "hypervisorctl --json generations", { lines: 10 })) as { generations: { id: number; state: string }[] };
  const first = gens.generations[0]!;
  // Releasing: its Debian block builds the image and adds it; then deploy and check; then swap.
  const releasing = blocksOf(ctx.runbook, "Releasing a new generation").filter((b) => !b.lead.startsWith("**NixOS**"));
  for (const block of releasing)
    await runBlock(ctx.box, block, { values, env: ctx.env }, report, (r) => {
      const id = /generation (\d+) recorded/.exec(r.output)?.[1];
      if (id) values.generation = id;
    });
  // The first generation is the rollback target: marked known-good by hand, as the runbook allows.
  await boxStep(ctx, `hypervisorctl generations known-good ${first.id}`);
  await boxStep(ctx, `hypervisorctl generations bad ${values.generation}`);
  const load = await startLoad(ctx);
  const t0 = performance.now();
  const rolled = await ctx.box.execAsync("hypervisorctl rollback --json", { env: ctx.env });
  const rollbackMs = performance.now() - t0;
  report.command("time hypervisorctl rollback --json", rolled.stdout + rolled.stderr, rolled.ms, rolled.status);
  // The WebSocket on the old live gets HYPERVISOR_DRAIN_MS (30 s) before its 1012.
  await sleep(32_000);
  const { samples, failed } = await stopLoad(load);
  report.note(
    `Rollback took ${seconds(rollbackMs)} (HYPERVISOR_ROLLBACK_DEADLINE_MS 10 s); during it and 32 s after: **${samples.length} requests, ${failed.length} failed**; ` +
      `WebSocket closes ${JSON.stringify(load.echo.closeCodes)}.`,
  );
  if (rolled.status !== 0) throw new Error(`hypervisorctl rollback exited ${rolled.status}`);
  const result = JSON.parse(rolled.stdout) as { ok?: boolean };
  if (result.ok !== true) throw new Error(`rollback answered ${rolled.stdout}`);
  if (rollbackMs > 10_000) throw new Error(`the rollback took ${seconds(rollbackMs)}, beyond its deadline`);
  if (failed.length) throw new Error(`${failed.length} requests failed during the rollback: ${[...new Set(failed)].slice(0, 5).join("; ")}`);
  const whoami = await get(`https://live-${ctx.user}.${SANDBOX_DOMAIN}/whoami`, { endpoint: ctx.endpoint, cookie: ctx.cookies.live });
  report.note(`Live after the rollback answers: \`${whoami.body.trim().slice(0, 200)}\``);
  await boxStep(ctx, "hypervisorctl generations && hypervisorctl audit --limit 5", { lines: 15 });
}

async function upgradeAndBack(ctx: Context): Promise<void> {
  const report = ctx.report;
  const oldVersion = schemaVersion(ctx.box, OLD_TAG);
  const version = String(schemaVersion(ctx.box, NEW_TAG));
  report.note(`${OLD_TAG} has schema version ${oldVersion}, ${NEW_TAG} ${version}.`);
  const upgrading = ctx.runbook.blocks.filter((b: Block) => b.chapter === "Upgrading the hypervisor" && b.section === "Upgrading the hypervisor");
  const load = await startLoad(ctx);
  for (const block of upgrading) await runBlock(ctx.box, block, { values: { "new-tag": NEW_TAG, repository: REPOSITORY }, env: ctx.env }, report);
  await sleep(1000);
  const during = await stopLoad(load);
  report.note(
    `During the upgrade (build beside, backup, switch, restart): **${during.samples.length} requests, ${during.failed.length} failed**; WebSocket closes ${JSON.stringify(load.echo.closeCodes)}.`,
  );
  if (during.failed.length) throw new Error(`${during.failed.length} requests failed during the upgrade`);
  await boxStep(ctx, `ls -l /var/backups/hypervisor/ /var/lib/hypervisor/hypervisor.db.pre-${version}`);
  await boxStep(
    ctx,
    `readlink /opt/hypervisor && sqlite_version=$(node -e "const D=require('/opt/hypervisor/node_modules/better-sqlite3');console.log(new D('/var/lib/hypervisor/hypervisor.db',{readonly:true}).pragma('user_version',{simple:true}))") && echo "schema $sqlite_version"`,
    { allowFail: true },
  );

  // Rolling back: the old release and the copy from before the migration.
  const back = blocksOfSection(ctx.runbook, "Rolling back an upgrade");
  for (const block of back) await runBlock(ctx.box, block, { values: { "old-tag": OLD_TAG, version, "new-tag": NEW_TAG }, env: ctx.env }, report);
  await boxStep(ctx, "readlink /opt/hypervisor && journalctl -u hypervisor -b --no-pager -o cat | grep 'hypervisor started' | tail -n 1");
  const r = await get(`https://live-${ctx.user}.${SANDBOX_DOMAIN}/whoami`, { endpoint: ctx.endpoint, cookie: ctx.cookies.live });
  report.note(`After the rollback the user's session (from before the upgrade, in the restored copy) is served: HTTP ${r.status}.`);
  if (r.status !== 200) throw new Error(`the user's live answered ${r.status} after the rollback`);
}

async function rules(ctx: Context): Promise<void> {
  const report = ctx.report;
  await boxStep(ctx, "systemctl list-timers --all --no-pager");
  const timers = await boxStep(
    ctx,
    "systemctl is-enabled apt-daily.timer apt-daily-upgrade.timer podman-auto-update.timer; systemctl is-active apt-daily.timer apt-daily-upgrade.timer podman-auto-update.timer",
    { allowFail: true },
  );
  const [enabled, active] = [timers.split("\n").slice(0, 3), timers.split("\n").slice(3, 6)];
  if (enabled.some((s) => s !== "masked") || active.some((s) => s === "active")) throw new Error(`update timers: ${timers}`);
  // The token lives on tmpfs: found there (the search works), nowhere on the box's disk.
  const onTmpfs = await boxStep(ctx, `grep -rlF '${ctx.token}' /run/credstore /run/credentials 2>/dev/null; true`);
  if (!onTmpfs.includes("/run/credstore")) throw new Error("the operator token is not in /run/credstore: the search would not find it either");
  const found = run("grep", ["-rlF", "--devices=skip", ctx.token, ctx.box.dir]);
  report.command(
    `grep -rlF <operator token> <the box's whole filesystem on disk>`,
    found.stdout || "(nothing)",
    found.ms,
    found.status === 1 ? 0 : found.status,
  );
  if (found.stdout.trim()) throw new Error(`the operator token is on disk: ${found.stdout}`);
  // Nothing written by hand where the runbook links: every entry a link, every hypervisor one into a release.
  const files = await boxStep(
    ctx,
    "find /etc/systemd/system /run/systemd/system /etc/tmpfiles.d /etc/containers/containers.conf.d /etc/nginx/sites-enabled /usr/local/bin -type f",
    { allowFail: true },
  );
  if (files.trim()) throw new Error(`files written instead of linked:\n${files}`);
  const links = await boxStep(
    ctx,
    'for l in $(find /etc/systemd/system /run/systemd/system /etc/tmpfiles.d /etc/containers/containers.conf.d /etc/nginx/sites-enabled /usr/local/bin -type l | grep -i -e hypervisor -e podman); do printf \'%s -> %s\\n\' "$l" "$(readlink -f "$l")"; done',
    { lines: 40 },
  );
  const outside = links
    .trim()
    .split("\n")
    .filter((l) => l && !l.includes("-> /opt/hypervisor-releases/") && !l.endsWith("-> /dev/null") && !/\.wants\//.test(l.split(" -> ")[0]!));
  if (outside.length) throw new Error(`links not into a release directory:\n${outside.join("\n")}`);
  await boxStep(ctx, "git -C /opt/hypervisor status --short && git -C /opt/hypervisor describe --tags --exact-match");
}

async function bubblewrap(ctx: Context): Promise<void> {
  const out = await boxStep(
    ctx,
    "bwrap --unshare-all --share-net --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --proc /proc --dev /dev --uid 65534 /usr/bin/id -u",
    { allowFail: true },
  );
  ctx.report.note(out.trim() === "65534" ? "bubblewrap contains a process in the box (as root, outside the unit)." : "bubblewrap does not run in the box.");
  if (out.trim() !== "65534") throw new Error("bubblewrap cannot contain a process in the box");
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    log(err instanceof Error ? (err.stack ?? err.message) : String(err));
    process.exit(2);
  },
);

// `npm run rehearsal`: deploy/RUNBOOK.md rehearsed on a Debian 13 machine booted with systemd in
// a box (test/host/box.ts), from stage 1 to the rollbacks, with the evidence written to a report.
// Needs root, debootstrap and systemd-nspawn (scripts/install-deps.sh), and Debian's mirror and the
// npm registry reachable from this host (nothing else is downloaded). Exits 0 when every gate passed.
import { createHash, randomBytes } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Browser } from "playwright-core";
import { launchBrowser } from "../helpers/browser.js";
import { repoRoot } from "../helpers/paths.js";
import { Box, boxImage, CACHE_DIR, debianMirror } from "./box.js";
import { boxStep, NEW_TAG, NPM_CACHE, OLD_TAG, ORIGIN_HOST, REPOSITORY, SANDBOX_DOMAIN, type Context } from "./context.js";
import { startEgressProxy, summarize, type EgressProxy } from "./egress-proxy.js";
import { crashLoopStops, generationRollback, rebootBox, restartUnderLoad, RESTARTS, upgradeAndBack } from "./operations.js";
import { Report, seconds, type Gate } from "./report.js";
import { blocksOf, blocksOfSection, readRunbook, aptPackages } from "./runbook.js";
import { bubblewrap, rules } from "./rules.js";
import { log, must, run } from "./run.js";
import { runBlock, type BlockRun, type Deviation } from "./stages.js";
import { browserUser, sandboxEgress, sandboxLines, socketStart } from "./user.js";

const REPORT = resolve(process.env.HYPERVISOR_REHEARSAL_REPORT ?? join(repoRoot, "var/rehearsal/report.md"));

/**
 * Installed beyond the runbook's packages, for this machine: runc, since crun fails on its cgroup
 * v1 (DEVIATIONS); bubblewrap, to say whether the process runtime could contain sandboxes here;
 * ccache, so that better-sqlite3, which the runbook compiles for every release (stage 3 and the
 * upgrade), is compiled once per machine instead of taking minutes in every run: the compiler's
 * output for the same source, flags and compiler is the same, and the runbook's commands run
 * unchanged (only CC and CXX name the cache).
 */
const MACHINE_PACKAGES = ["runc", "bubblewrap", "ccache"];
/** Where the box sees ccache's directory, kept in the cache directory between runs. */
const CCACHE = "/var/cache/ccache";

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
    mkdirSync(join(CACHE_DIR, "ccache"), { recursive: true });
    box = Box.create(rootfs, [`${join(CACHE_DIR, "npm")}:${NPM_CACHE}`, `${join(CACHE_DIR, "ccache")}:${CCACHE}`]);
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
      env: {
        DEBIAN_FRONTEND: "noninteractive",
        npm_config_cache: NPM_CACHE,
        npm_config_offline: "true",
        npm_config_update_notifier: "false",
        CC: "ccache gcc",
        CXX: "ccache g++",
        CCACHE_DIR: CCACHE,
      },
      endpoint: { address: box.network.boxAddress, ca: tls.cert },
      token: randomBytes(24).toString("hex"),
      user: `rh${randomBytes(3).toString("hex")}`,
      cookies: { live: "", dev: "" },
    };
    report.fact("repository", `${repository} in the box, a clone of this checkout`);
    report.fact("compiler", `CC and CXX through ccache (${CCACHE}, kept in ${join(CACHE_DIR, "ccache")} between runs): the runbook's commands unchanged`);

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
          try {
            for (const block of stages[n - 1]!.filter((b) => !b.section.startsWith("Operator TCP")))
              await runBlock(box!, block, { values, env: ctx.env, deviations: DEVIATIONS, ...extra }, report);
            await then?.();
          } catch (err) {
            // A failed stage's evidence includes why the service failed, if it got that far.
            const journal = "journalctl -u hypervisor -b --no-pager -n 60";
            const seen = box!.exec(journal);
            report.command(journal, seen.stdout + seen.stderr, seen.ms);
            throw err;
          }
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
    await report.gate(
      "A sandbox's only way out is the egress gateway",
      "node runbook: sandboxes reach only what the operator allows; the unit enforces egress with CAP_NET_ADMIN",
      () => sandboxEgress(ctx),
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
    const crashLoop = await report.gate(
      "A crash loop stops at the unit's start limit, and is recovered as the runbook says",
      'runbook "Restart policy" and "Hypervisor crash-looping": never self-heal beyond a bounded restart',
      () => crashLoopStops(ctx),
      [user],
    );
    await report.gate("Process runtime: bubblewrap in the box", "phase 1 rollback: fallback to direct-process sandbox mode", () => bubblewrap(ctx), [booted]);
    void [sandboxLogs, restarts, reboot, generations, upgrade, crashLoop];

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

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    log(err instanceof Error ? (err.stack ?? err.message) : String(err));
    process.exit(2);
  },
);

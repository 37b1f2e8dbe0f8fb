// The gates that operate the running hypervisor: restarts under load, a reboot, a generation
// rollback, an upgrade and its rollback, and a crash loop stopped by the unit's start limit.
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Box } from "./box.js";
import { boxStep, NEW_TAG, OLD_TAG, ORIGIN_HOST, REPOSITORY, SANDBOX_DOMAIN, startLoad, stopLoad, type Context } from "./context.js";
import { seconds } from "./report.js";
import { blocksOf, blocksOfSection, type Block } from "./runbook.js";
import { must } from "./run.js";
import { runBlock } from "./stages.js";
import { get } from "./traffic.js";

export const RESTARTS = 10;

export async function restartUnderLoad(ctx: Context): Promise<void> {
  const load = await startLoad(ctx);
  const took: number[] = [];
  // Each restart stops a daemon that serves: the WebSocket is connected to it again (after the
  // previous 1012) and its echo came back. Type=exec returns from a restart before the new daemon
  // listens, so restarting at once would stop daemons still starting, and test less.
  const echoed = async (n: number) => {
    const deadline = performance.now() + 60_000;
    while (load.echo.echoes < n && performance.now() < deadline) await sleep(100);
    if (load.echo.echoes < n) throw new Error(`the WebSocket's connection ${n} had no echo within 60 s: ${JSON.stringify(load.echo.errors)}`);
  };
  for (let i = 0; i < RESTARTS; i++) {
    await echoed(i + 1);
    await sleep(500);
    const ran = await ctx.box.execAsync("systemctl restart hypervisor.service");
    if (ran.status !== 0) throw new Error(`systemctl restart exited ${ran.status}: ${ran.stdout}${ran.stderr}`);
    took.push(ran.ms);
  }
  await echoed(RESTARTS + 1);
  await sleep(1000);
  const { samples, failed } = await stopLoad(load);
  const slowest = Math.max(...samples.map((s) => s.ms));
  ctx.report.note(
    `${RESTARTS} × \`systemctl restart hypervisor.service\` (each ${took.map((t) => seconds(t)).join(", ")}) while two keep-alive HTTPS clients and one WebSocket used the live sandbox through nginx: ` +
      `**${samples.length} requests, ${failed.length} failed**, slowest ${seconds(slowest)}; WebSocket close codes ${JSON.stringify(load.echo.closeCodes)}, ${load.echo.opens} connections, ${load.echo.echoes} echoes, errors ${JSON.stringify(load.echo.errors)}.`,
  );
  await boxStep(ctx, `journalctl -u hypervisor -b --no-pager -o cat | grep -c 'hypervisor started'`);
  if (failed.length) throw new Error(`${failed.length} of ${samples.length} requests failed: ${[...new Set(failed)].slice(0, 5).join("; ")}`);
  // Every close a restart made is 1012 ("restarting: reconnect"), the test's own last one 1000. A
  // reconnect that lands on a daemon still shutting down is told 1012 once more: at least one
  // per restart, never another code.
  const codes = load.echo.closeCodes;
  const byRestarts = codes.slice(0, -1);
  if (codes.at(-1) !== 1000 || byRestarts.length < RESTARTS || byRestarts.some((c) => c !== 1012))
    throw new Error(`WebSocket closes ${JSON.stringify(codes)}, expected at least ${RESTARTS} × 1012, only 1012, then the test's 1000`);
  if (load.echo.echoes !== load.echo.opens || load.echo.errors.length)
    throw new Error(`WebSocket: ${load.echo.opens} opens, ${load.echo.echoes} echoes, errors ${load.echo.errors.join("; ")}`);
}

export async function rebootBox(ctx: Context): Promise<void> {
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

export async function generationRollback(ctx: Context): Promise<void> {
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

export async function upgradeAndBack(ctx: Context): Promise<void> {
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

/**
 * A daemon that exits 1 at every start (node cannot load a module it is told to preload): systemd
 * restarts it every RestartSec= until the start limit, then gives up, and the socket units with
 * it (their listeners close, so nothing starts it again). Then the runbook's recovery: the cause
 * removed, reset-failed and a start, and the user is served again.
 */
export async function crashLoopStops(ctx: Context): Promise<void> {
  const dropIn = "/run/systemd/system/hypervisor.service.d/zz-rehearsal-crash.conf";
  const limit = await boxStep(ctx, "systemctl show hypervisor.service -p StartLimitBurst -p StartLimitIntervalUSec -p RestartUSec");
  await boxStep(
    ctx,
    `install -d ${dirname(dropIn)} && printf '[Service]\nEnvironment=NODE_OPTIONS=--require=/nonexistent/crash.js\n' > ${dropIn} && systemctl daemon-reload && systemctl restart hypervisor.service`,
  );
  const started = performance.now();
  let state = "";
  while (performance.now() - started < 300_000) {
    // The service keeps the result of its last run (exit-code); the refusal shows on its socket
    // units, which systemd fails with service-start-limit-hit (tried on Debian 13's systemd 257).
    state = (
      await ctx.box.execAsync(
        "systemctl show hypervisor.service -p ActiveState -p Result -p NRestarts --value | paste -sd ' '; systemctl show hypervisor.socket -p Result --value",
      )
    ).stdout
      .trim()
      .replace("\n", "; socket: ");
    if (state.endsWith("service-start-limit-hit")) break;
    await sleep(1000);
  }
  const stoppedMs = performance.now() - started;
  const sockets = await boxStep(ctx, "systemctl show hypervisor.socket hypervisor-operator.socket -p Id -p ActiveState -p Result --value | paste -sd ' '", {
    allowFail: true,
  });
  const refused = await boxStep(ctx, 'curl -sS --max-time 5 http://127.0.0.1:8080/_hv/healthz; echo " exit $?"', { allowFail: true });
  await boxStep(ctx, "journalctl -u hypervisor.service -u hypervisor.socket -b --no-pager -o short-monotonic | tail -n 4", { allowFail: true, lines: 4 });
  ctx.report.note(
    `With the daemon failing at every start, systemd gave up after ${seconds(stoppedMs)} (\`${state}\`: the service's state, result and restarts); ` +
      `the socket units: \`${sockets.trim()}\`; a connection then: \`${refused.trim().split("\n").pop()}\`.`,
  );
  if (!state.endsWith("service-start-limit-hit")) throw new Error(`the crash loop did not stop within 300 s (${limit.trim()}): ${state}`);
  // The runbook's recovery, once the cause is gone (here: the drop-in that made it crash).
  await boxStep(ctx, `rm ${dropIn} && systemctl daemon-reload`);
  await boxStep(
    ctx,
    "systemctl reset-failed hypervisor.service hypervisor.socket hypervisor-operator.socket && systemctl start hypervisor.socket hypervisor-operator.socket hypervisor.service",
  );
  await boxStep(ctx, "hypervisorctl status && curl -fsS http://127.0.0.1:8080/_hv/readyz");
  const r = await get(`https://live-${ctx.user}.${SANDBOX_DOMAIN}/whoami`, { endpoint: ctx.endpoint, cookie: ctx.cookies.live, timeoutMs: 60_000 });
  ctx.report.note(`After the recovery the user's live answers HTTP ${r.status}.`);
  if (r.status !== 200) throw new Error(`the user's live answered ${r.status} after the recovery`);
}

/** The count of schema versions a checkout's migrations.ts declares (its last version): each one a template literal, opened by a line "  `" and closed by "  `,". */
function schemaVersion(box: Box, tag: string): number {
  const text = must("git", ["-C", join(box.dir, "work"), "show", `${tag}:hypervisor/db/migrations.ts`]).stdout;
  return [...text.matchAll(/^\s{2}`,?$/gm)].length / 2;
}

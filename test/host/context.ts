// What the rehearsal's gates share: the runbook's example names, the tags it releases, the run's
// context, a step in the box recorded for the report, and the user's load.
import type { Browser } from "playwright-core";
import { ReconnectingSocket } from "../helpers/ws-client.js";
import type { Box } from "./box.js";
import type { EgressProxy } from "./egress-proxy.js";
import type { Report } from "./report.js";
import type { Runbook } from "./runbook.js";
import { tail } from "./run.js";
import { HttpsLoop, wsOptions, type Endpoint, type Sample } from "./traffic.js";

/** The runbook's example names: its nginx site and hypervisor.env serve these. */
export const ORIGIN_HOST = "sandbox.example.org";
export const SANDBOX_DOMAIN = "sandboxes.example.org";
export const REPOSITORY = "/srv/hypervisor.git";
/** Where the box sees the npm cache of the lockfile's tarballs. */
export const NPM_CACHE = "/var/cache/npm-lockfile";
export const OLD_TAG = "rehearsal-1";
export const NEW_TAG = "rehearsal-2";

export interface Context {
  report: Report;
  box: Box;
  proxy: EgressProxy;
  runbook: Runbook;
  env: Record<string, string>;
  endpoint: Endpoint;
  token: string;
  user: string;
  cookies: { live: string; dev: string };
  browser?: Browser;
}

/** Runs a script in the box for a gate, recording it; throws when it exits non-zero. */
export async function boxStep(ctx: Context, script: string, options: { allowFail?: boolean; lines?: number } = {}): Promise<string> {
  const ran = await ctx.box.execAsync(script, { env: ctx.env, timeoutMs: 10 * 60_000 });
  const output = ran.stdout + ran.stderr;
  ctx.report.command(script, output, ran.ms, ran.status, options.lines);
  if (ran.status !== 0 && !options.allowFail) throw new Error(`${script} exited ${ran.status}:\n${tail(output, 30)}`);
  return ran.stdout;
}

export interface Load {
  loops: HttpsLoop[];
  echo: ReconnectingSocket;
}

export async function startLoad(ctx: Context): Promise<Load> {
  const live = `https://live-${ctx.user}.${SANDBOX_DOMAIN}`;
  const loops = [
    new HttpsLoop(ctx.endpoint, `${live}/whoami`, ctx.cookies.live).start(),
    new HttpsLoop(ctx.endpoint, `${live}/health`, ctx.cookies.live).start(),
  ];
  const echo = await new ReconnectingSocket(live, "/ws/echo", { cookie: ctx.cookies.live, origin: live }, wsOptions(ctx.endpoint)).start();
  return { loops, echo };
}

export async function stopLoad(load: Load): Promise<{ samples: Sample[]; failed: string[] }> {
  const samples = (await Promise.all(load.loops.map((l) => l.stop()))).flat();
  await load.echo.stop();
  const failed = samples.filter((s) => s.status !== 200).map((s) => `${s.status} ${s.error ?? ""}`.trim());
  return { samples, failed };
}

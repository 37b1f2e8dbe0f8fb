import type { Context, Hono } from "hono";
import type { Role } from "../../proxy/target.js";
import { requireScope } from "../auth/auth-service.js";
import { clientAddress, requireSameOrigin } from "../auth/request-context.js";
import type { SessionInfo } from "../auth/session-store.js";
import type { Config } from "../config.js";
import { asHypervisorError, HypervisorError } from "../errors.js";
import type { AppEnv } from "../http/error-handling.js";
import { UserName } from "../http/user-name.js";
import type { IdlePlan } from "../sandboxes/sandbox-manager.js";
import type { SandboxStatus } from "../sandboxes/sandbox-status.js";
import type { Services } from "../services.js";
import { startProgressView, type BrowserPages } from "./browser-pages.js";
import { readableLog } from "./log-view.js";

export const ACCOUNT_SANDBOXES_PATH = "/_hv/sandboxes";

/** A sandbox as its own user sees it on the account page. */
export interface AccountSandbox {
  role: Role;
  state: SandboxStatus["state"];
  generation: number;
  /** One health probe now; null when it is not running. */
  healthy: boolean | null;
  startedAt: string | null;
  /** When it was last used and what idleness will do to it, in words (idleNote). */
  idle: string;
  /** Stopped over its disk (HYPERVISOR_SANDBOX_DISK): why, and that it stays stopped until its data is smaller. */
  overDisk?: string;
}

/** The account page shows this many entries of a sandbox's log (readableLog), read from the last LOG_TAIL_MAX lines. */
export const LOG_ENTRIES = 20;
export const LOG_TAIL_MAX = 200;

const clock = (ms: number) => `${new Date(ms).toISOString().slice(11, 16)} UTC`;

function fromNow(ms: number, now: number): string {
  const minutes = Math.round((ms - now) / 60_000);
  if (minutes < 1) return "in under a minute";
  return minutes < 120 ? `in ${minutes} min` : `in ${Math.round(minutes / 60)} h`;
}

/** A running sandbox's last use and what follows if it stays unused (HYPERVISOR_IDLE_FREEZE_MS, HYPERVISOR_IDLE_STOP_MS). */
export function idleNote(state: SandboxStatus["state"], plan: IdlePlan | undefined, now: number): string {
  if (state === "starting") return "starting now";
  if (!plan || state === "stopped" || state === "not started") return "not running: opening it starts it";
  const used = `last used ${clock(plan.lastActivity)}`;
  if (plan.openSockets > 0) return `${used}; kept as it is while a connection to it stays open`;
  const steps = [
    ...(plan.freezeAt === null ? [] : [`frozen at ${clock(plan.freezeAt)} (${fromNow(plan.freezeAt, now)})`]),
    ...(plan.stopAt === null ? [] : [`stopped at ${clock(plan.stopAt)} (${fromNow(plan.stopAt, now)})`]),
  ];
  return steps.length ? `${used}; if unused until then, ${steps.join(", then ")}` : `${used}; never frozen or stopped for being idle`;
}

export type AccountSandboxDeps = Pick<Services, "sessions" | "manager" | "sandboxStatus" | "routing" | "audit"> & {
  config: Pick<Config, "publicOrigin" | "trustedProxies">;
  pages: BrowserPages;
};

/** The signed-in user's view of their sandboxes: what the account page shows. */
export async function accountSandboxes(deps: Pick<AccountSandboxDeps, "manager" | "sandboxStatus">, user: string): Promise<AccountSandbox[]> {
  const statuses = await deps.sandboxStatus.status([user]);
  const now = Date.now();
  return statuses.map((s) => ({
    role: s.role,
    state: s.state,
    generation: s.generation,
    healthy: s.health === null ? null : s.health === "healthy",
    startedAt: s.startedAt,
    idle: idleNote(s.state, deps.manager.idlePlan(user, s.slot), now),
    ...(s.overDisk ? { overDisk: s.overDisk } : {}),
  }));
}

/** A sandbox's log, read from its last `tail` lines, as readableLog gives it; none for one never started (it has no log yet). */
export async function lastLogLines(manager: Services["manager"], user: string, role: Role, tail: number): Promise<string[]> {
  const lines: string[] = [];
  try {
    for await (const line of manager.logs(user, role, { tail })) lines.push(line);
  } catch (err) {
    if (asHypervisorError(err).code !== "not_found") throw err;
  }
  return readableLog(lines, LOG_ENTRIES);
}

/**
 * `/_hv/sandboxes/{user}/{role}[/logs|/start|/restart|/stop]`: a user's own sandboxes, for the account
 * page and the starting page. A full session only (a recovery session may only enrol a
 * passkey), the path's user must be the session's (no one acts on another user's sandbox),
 * and state changes must come from the public origin (Origin checked, as for /auth/*; the
 * SameSite=Lax session cookie is the second line). Each action is audited.
 */
export function registerAccountSandboxRoutes(app: Hono<AppEnv>, deps: AccountSandboxDeps): void {
  const { sessions, manager, routing, audit, config, pages } = deps;
  const base = ACCOUNT_SANDBOXES_PATH;
  manager.onStartProgress((p) => pages.progressed(p));

  app.use(`${base}/*`, async function noStore(c, next) {
    await next();
    c.header("Cache-Control", "no-store");
  });
  app.use(`${base}/*`, requireSameOrigin(config.publicOrigin));

  /** The session's user and the role, once the path names that user's own sandbox. */
  const own = (c: Context<AppEnv>): { session: SessionInfo; role: Role } => {
    const session = sessions.authenticate(c.req.header("cookie"));
    requireScope(session, "full");
    const user = c.req.param("user") ?? "";
    const role = c.req.param("role");
    if (!UserName.safeParse(user).success) throw new HypervisorError("validation_failed", "user: a user name");
    if (role !== "live" && role !== "dev") throw new HypervisorError("validation_failed", "role: live or dev");
    if (user !== session.user) throw new HypervisorError("forbidden", "you can only see and change your own sandboxes");
    return { session, role };
  };
  const view = async (user: string, role: Role) => (await accountSandboxes(deps, user)).find((s) => s.role === role)!;

  app.get(`${base}/:user/:role`, async (c) => {
    const { session, role } = own(c);
    const since = Number(c.req.query("since") ?? NaN);
    const failure = Number.isFinite(since) ? pages.failureSince(session.user, role, since) : undefined;
    const sandbox = await view(session.user, role);
    const progress = sandbox.state === "starting" ? pages.progressOf(session.user, routing.slotOf(session.user, role)) : undefined;
    return c.json(
      {
        sandbox,
        ...(progress ? { progress: startProgressView(progress) } : {}),
        ...(failure ? { failure: { code: failure.code, message: failure.message } } : {}),
      },
      200,
    );
  });

  // `tail`: how many of the sandbox's last lines are read; the answer is those lines as the page shows them.
  app.get(`${base}/:user/:role/logs`, async (c) => {
    const { session, role } = own(c);
    const raw = c.req.query("tail");
    const tail = raw === undefined ? LOG_TAIL_MAX : Number(raw);
    if (!Number.isInteger(tail) || tail < 1 || tail > LOG_TAIL_MAX)
      throw new HypervisorError("validation_failed", `tail: a whole number from 1 to ${LOG_TAIL_MAX}`);
    return c.json({ lines: await lastLogLines(manager, session.user, role, tail) }, 200);
  });

  app.post(`${base}/:user/:role/:action`, async (c) => {
    const { session, role } = own(c);
    const action = c.req.param("action");
    if (action !== "start" && action !== "restart" && action !== "stop") throw new HypervisorError("not_found", "actions: start, restart, stop");
    const user = session.user;
    const began = Date.now();
    const entry = { actor: `user:${user}`, action: `sandbox.${action}`, target: `${user}/${role}`, source: clientAddress(c, config.trustedProxies) };
    try {
      if (action === "stop") await manager.stop(user, role);
      else {
        const started = action === "start" ? manager.ensure(user, role) : manager.restart(user, role);
        pages.watch(user, role, started);
        await started;
      }
    } catch (err) {
      const e = asHypervisorError(err);
      audit.record({
        ...entry,
        outcome: e.status >= 500 ? "error" : "refused",
        durationMs: Date.now() - began,
        details: { code: e.code, message: e.message, requestId: c.get("requestId") },
      });
      throw err;
    }
    audit.record({ ...entry, outcome: "ok", durationMs: Date.now() - began, details: { requestId: c.get("requestId") } });
    return c.json({ sandbox: await view(user, role) }, 200);
  });
}

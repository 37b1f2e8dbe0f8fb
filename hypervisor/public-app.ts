import { Hono, type MiddlewareHandler } from "hono";
import { requestId } from "hono/request-id";
import { expiredCookies, SESSION_COOKIE, sessionTokens } from "../proxy/cookies.js";
import { registerAuthRoutes } from "./auth/auth-routes.js";
import { registerUserKeyRoutes } from "./egress/user-key-routes.js";
import type { SessionStore } from "./auth/session-store.js";
import { installErrorHandling, requestLogger, type AppEnv } from "./http/error-handling.js";
import { BrowserPages } from "./pages/browser-pages.js";
import { registerAccountDataRoutes } from "./pages/data-routes.js";
import { registerPages } from "./pages/pages.js";
import type { Services } from "./services.js";

/**
 * The hypervisor's own routes on the public listener: `/_hv/*`, `/auth/*` and the sign-in pages.
 * `pages` is shared with the proxy, so the starting page it sends can learn how a start ended.
 */
export function createPublicApp(
  services: Services,
  pages = new BrowserPages({ publicOrigin: services.config.publicOrigin, sandboxOrigins: services.sandboxOrigins !== undefined }),
): Hono<AppEnv> {
  const { log, config, auth, sessions, audit, metrics, manager, sandboxStatus, routing, readiness, checks, sandboxOrigins, sandboxGrants, egress } = services;
  const app = new Hono<AppEnv>();
  installErrorHandling(app, log, pages.ownError);
  app.use(requestId(), requestLogger(log));
  app.use(expireConflictingSessions(sessions, config.publicOrigin));
  app.get("/_hv/healthz", (c) => c.json({ status: "ok" }));
  app.get("/_hv/readyz", async (c) => {
    const ready = await readiness();
    const ok = ready.database && ready.runtime;
    // One host down affects only its users: the daemon still serves, degraded (DESIGN §8a).
    const status = !ok ? "not ready" : ready.unreachableHosts?.length ? "degraded" : "ready";
    // What the host lacks is a detail, not unreadiness: the operator decides what to do about it.
    return c.json({ status, ...ready, host: checks.host?.latest(), egress: egress.status }, ok ? 200 : 503);
  });
  registerAuthRoutes(app, { auth, sessions, audit, metrics, config });
  registerUserKeyRoutes(app, { auth, sessions, audit, egress: services.egressCredentials, config });
  registerPages(app, {
    sessions,
    auth,
    manager,
    sandboxStatus,
    routing,
    audit,
    config,
    sandboxOrigins,
    sandboxGrants,
    pages,
    egressCredentials: services.egressCredentials,
    snapshots: services.snapshots,
  });
  registerAccountDataRoutes(app, { sessions, auth, snapshots: services.snapshots, dataReleases: services.dataReleases, audit, config });
  return app;
}

/**
 * A request with more than one session cookie and no session (two different ones: signed out,
 * DESIGN §5) gets them expired, as the proxy does for sandbox paths. The expiries go first, so a
 * sign-in answered here still sets its new cookie at Path=/ last, and that one stays.
 */
function expireConflictingSessions(sessions: SessionStore, publicOrigin: URL): MiddlewareHandler<AppEnv> {
  const secure = publicOrigin.protocol === "https:";
  return async function expireConflictingSessions(c, next) {
    const cookie = c.req.header("cookie");
    const conflicting = sessionTokens(cookie).length > 1 && !sessions.authenticate(cookie);
    await next();
    if (!conflicting) return;
    const routeSet = c.res.headers.getSetCookie();
    c.res.headers.delete("set-cookie");
    for (const line of [...expiredCookies(SESSION_COOKIE, c.req.path, publicOrigin.hostname, secure), ...routeSet]) c.res.headers.append("set-cookie", line);
  };
}

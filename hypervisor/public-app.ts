import { Hono } from "hono";
import { requestId } from "hono/request-id";
import { registerAuthRoutes } from "./auth/auth-routes.js";
import { installErrorHandling, type AppEnv } from "./http/error-handling.js";
import { registerPages } from "./pages/pages.js";
import type { Services } from "./services.js";

/** The hypervisor's own routes on the public listener: `/_hv/*`, `/auth/*` and the sign-in pages. */
export function createPublicApp(services: Services): Hono<AppEnv> {
  const { log, config, auth, sessions, audit, metrics, manager, readiness } = services;
  const app = new Hono<AppEnv>();
  installErrorHandling(app, log);
  app.use(requestId());
  app.get("/_hv/healthz", (c) => c.json({ status: "ok" }));
  app.get("/_hv/readyz", async (c) => {
    const ready = await readiness();
    const ok = ready.database && ready.runtime;
    return c.json({ status: ok ? "ready" : "not ready", ...ready }, ok ? 200 : 503);
  });
  registerAuthRoutes(app, { auth, sessions, audit, metrics, config });
  registerPages(app, { sessions, auth, manager, config });
  return app;
}

import type { Context, Hono } from "hono";
import { z } from "zod";
import { rateLimitKey } from "../../proxy/addresses.js";
import type { AuditLog } from "../audit/audit-log.js";
import { StepUp } from "../auth/auth-routes.js";
import { requireScope, type AuthService } from "../auth/auth-service.js";
import { clientAddress, readJson } from "../auth/request-context.js";
import type { SessionStore } from "../auth/session-store.js";
import type { Config } from "../config.js";
import { asHypervisorError, HypervisorError } from "../errors.js";
import type { AppEnv } from "../http/error-handling.js";
import type { EgressCredentials } from "./egress-service.js";
import { RouteName } from "./routes-file.js";
import { MAX_USER_KEY_CHARS } from "./user-keys.js";

/** A provider key: printable, no spaces or line breaks (it goes into a header), at least 8 characters. */
const UserKey = z
  .string()
  .min(8, "a key is at least 8 characters")
  .max(MAX_USER_KEY_CHARS, `a key is at most ${MAX_USER_KEY_CHARS} characters`)
  .regex(/^[\x21-\x7e]+$/, "a key is printable characters without spaces or line breaks");
const SetKeyBody = z.object({ key: UserKey, stepUp: StepUp }).strict();
const RemoveKeyBody = z.object({ stepUp: StepUp }).strict();

/** One route that takes a user's own key, as its owner sees it. */
export interface UserKeyRoute {
  route: string;
  upstream: string;
  /** The last four characters of the stored key; null when none is stored. */
  last4: string | null;
  updatedAt: string | null;
}

/** The routes that take users' own keys, with the user's stored ones (last four characters only). */
export function userKeyRoutes(egress: Pick<EgressCredentials, "routes" | "userKeys">, user: string): UserKeyRoute[] {
  const stored = new Map(egress.userKeys.list(user).map((k) => [k.route, k]));
  return egress.routes
    .views()
    .filter((r) => r.userKeys)
    .map((r) => ({ route: r.name, upstream: r.upstream, last4: stored.get(r.name)?.last4 ?? null, updatedAt: stored.get(r.name)?.updatedAt ?? null }));
}

export interface UserKeyRouteDeps {
  auth: AuthService;
  sessions: SessionStore;
  audit: AuditLog;
  egress: Pick<EgressCredentials, "routes" | "userKeys" | "budgets">;
  config: Pick<Config, "trustedProxies">;
}

/**
 * `/auth/egress-keys`: a signed-in user stores or removes their own key for a route that allows
 * it (DESIGN §5b), each behind a step-up; the key is never answered back, only its last four
 * characters. Registered after the `/auth/*` routes, so their Origin check, body limit and
 * no-store apply here too.
 */
export function registerUserKeyRoutes(app: Hono<AppEnv>, { auth, sessions, audit, egress, config }: UserKeyRouteDeps): void {
  const signedIn = (c: Context<AppEnv>) => {
    const session = sessions.authenticate(c.req.header("cookie"));
    requireScope(session, "full");
    return session;
  };
  const limit = (c: Context<AppEnv>) => {
    const decision = auth.addresses.take(rateLimitKey(clientAddress(c, config.trustedProxies)));
    if (!decision.ok)
      throw new HypervisorError("rate_limited", "too many requests from this address; wait and try again", { retryAfterSeconds: decision.retryAfterSeconds });
  };
  const routeOf = (c: Context<AppEnv>) => {
    const name = c.req.param("route") ?? "";
    const route = RouteName.safeParse(name).success ? egress.routes.route(name) : undefined;
    if (!route?.userKeys) throw new HypervisorError("not_found", "no route here takes your own key");
    return route;
  };
  const record = (c: Context<AppEnv>, user: string, action: string, route: string, err?: unknown) => {
    const e = err === undefined ? undefined : asHypervisorError(err);
    audit.record({
      actor: `user:${user}`,
      action,
      target: user,
      source: clientAddress(c, config.trustedProxies),
      outcome: e ? "refused" : "ok",
      // The route only: never the key, not even its last four.
      details: { route, requestId: c.get("requestId"), ...(e ? { code: e.code } : {}) },
    });
  };

  app.get("/auth/egress-keys", (c) => {
    const session = signedIn(c);
    return c.json({ enabled: egress.userKeys.enabled, routes: userKeyRoutes(egress, session.user) }, 200);
  });

  app.get("/auth/egress-usage", (c) => {
    const session = signedIn(c);
    return c.json({ usage: egress.budgets.usage(session.user) }, 200);
  });

  app.put("/auth/egress-keys/:route", async (c) => {
    const session = signedIn(c);
    limit(c);
    const route = routeOf(c);
    if (!egress.userKeys.enabled)
      throw new HypervisorError("not_ready", "your own keys are off on this hypervisor: its operator has not set the egress-secrets-key credential");
    const { key, stepUp } = await readJson(c, SetKeyBody);
    try {
      await auth.confirmStepUp(session, "egress-key.set", stepUp);
    } catch (err) {
      record(c, session.user, "egress.user-key.set", route.name, err);
      throw err;
    }
    const stored = egress.userKeys.set(session.user, route.name, key);
    record(c, session.user, "egress.user-key.set", route.name);
    return c.json({ route: route.name, last4: stored.last4, updatedAt: stored.updatedAt }, 200);
  });

  app.delete("/auth/egress-keys/:route", async (c) => {
    const session = signedIn(c);
    limit(c);
    const route = routeOf(c);
    const { stepUp } = await readJson(c, RemoveKeyBody);
    try {
      await auth.confirmStepUp(session, "egress-key.remove", stepUp);
    } catch (err) {
      record(c, session.user, "egress.user-key.remove", route.name, err);
      throw err;
    }
    if (!egress.userKeys.remove(session.user, route.name)) throw new HypervisorError("not_found", "you have no key stored for this route");
    record(c, session.user, "egress.user-key.remove", route.name);
    return c.json({ removed: route.name }, 200);
  });
}

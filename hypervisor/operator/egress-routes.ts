import { createRoute, z } from "@hono/zod-openapi";
import { HypervisorError } from "../errors.js";
import { UserName } from "../http/user-name.js";
import type { Services } from "../services.js";
import { audited } from "./audited.js";
import type { OperatorApp } from "./operator-env.js";
import { errorResponses } from "./schemas.js";

/** A route as the operator sees it: whether its secret is loaded, never the secret. Users' own keys are not shown at all. */
export const EgressRouteSchema = z
  .object({
    name: z.string(),
    upstream: z.string(),
    header: z.string(),
    secret: z.string().openapi({ description: "the secret's name (credential egress-<secret>), not its value" }),
    secretLoaded: z.boolean(),
    userKeys: z.boolean(),
    rpm: z.number().nullable(),
    concurrent: z.number(),
    dailyRequests: z.number().nullable(),
    dailyBytes: z.number().nullable(),
  })
  .openapi("EgressRoute");
export const EgressRoutesResponse = z.object({ routes: z.array(EgressRouteSchema) });

export const EgressUsageSchema = z
  .object({
    user: z.string(),
    target: z.string().openapi({ description: "route:<name>, or proxy for the forward proxy" }),
    minuteRequests: z.number(),
    concurrent: z.number(),
    dayRequests: z.number(),
    dayBytes: z.number(),
    day: z.string(),
  })
  .openapi("EgressUsage");
export const EgressUsageResponse = z.object({ usage: z.array(EgressUsageSchema) });

export const EgressLogEntrySchema = z
  .object({
    id: z.number(),
    at: z.string(),
    user: z.string(),
    slot: z.string().nullable(),
    generation: z.number().nullable(),
    target: z.string().nullable(),
    method: z.string().nullable(),
    path: z.string().nullable().openapi({ description: "without its query" }),
    status: z.number().nullable(),
    bytesIn: z.number().nullable(),
    bytesOut: z.number().nullable(),
    durationMs: z.number().nullable(),
    decision: z.string().openapi({ description: "allowed, refused, or summary (rows a flood had suppressed)" }),
    reason: z.string().nullable(),
  })
  .openapi("EgressLogEntry");
export const EgressLogResponse = z.object({ entries: z.array(EgressLogEntrySchema) });

export const EgressReloadResponse = z.object({ routes: z.number(), missingSecrets: z.array(z.string()) }).openapi("EgressReload");

const routesRoute = createRoute({
  method: "get",
  path: "/egress/routes",
  summary: "The egress routes: names, upstreams, whether each secret is loaded (never a value)",
  responses: { 200: { description: "routes", content: { "application/json": { schema: EgressRoutesResponse } } }, ...errorResponses(401) },
});

const usageRoute = createRoute({
  method: "get",
  path: "/egress/usage",
  summary: "Egress budgets in use: this minute's and today's requests and bytes per user and route",
  request: { query: z.object({ user: UserName.optional() }) },
  responses: { 200: { description: "usage", content: { "application/json": { schema: EgressUsageResponse } } }, ...errorResponses(400, 401) },
});

const logRoute = createRoute({
  method: "get",
  path: "/egress/log",
  summary: "Egress calls and refusals from the audit, newest first",
  request: { query: z.object({ user: UserName.optional(), tail: z.coerce.number().int().min(1).max(1000).default(100) }) },
  responses: { 200: { description: "entries", content: { "application/json": { schema: EgressLogResponse } } }, ...errorResponses(400, 401) },
});

const reloadRoute = createRoute({
  method: "post",
  path: "/egress/reload",
  summary: "Read the routes file and the secrets again; on failure the previous ones stay",
  responses: {
    200: { description: "reloaded", content: { "application/json": { schema: EgressReloadResponse } } },
    ...errorResponses(400, 401),
  },
});

export type EgressRouteDeps = { egress: Services["egressCredentials"]; audit: Services["audit"] };

export function registerEgressRoutes(app: OperatorApp, { egress, audit }: EgressRouteDeps): void {
  app.openapi(routesRoute, (c) => c.json({ routes: egress.routes.views() }, 200));

  app.openapi(usageRoute, (c) => c.json({ usage: egress.budgets.usage(c.req.valid("query").user) }, 200));

  app.openapi(logRoute, (c) => {
    const { user, tail } = c.req.valid("query");
    return c.json({ entries: egress.audit.log({ user, tail }) }, 200);
  });

  app.openapi(reloadRoute, async (c) => {
    const result = await audited(audit, c, "egress.reload", "egress", async () => {
      const r = egress.reload();
      // The reason names files and fields, never a secret's value (the loader never quotes one).
      if (!r.ok) throw new HypervisorError("validation_failed", `not reloaded, the previous routes stay: ${r.error}`);
      return r;
    });
    return c.json({ routes: result.routes, missingSecrets: result.missingSecrets }, 200);
  });
}

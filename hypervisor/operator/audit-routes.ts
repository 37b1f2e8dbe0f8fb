import { createRoute, z } from "@hono/zod-openapi";
import type { Services } from "../services.js";
import type { OperatorApp } from "./operator-env.js";
import { errorResponses } from "./schemas.js";

export const AuditEntrySchema = z
  .object({
    id: z.number(),
    at: z.string(),
    actor: z.string(),
    action: z.string(),
    target: z.string().nullable(),
    source: z.string().nullable(),
    outcome: z.string(),
    durationMs: z.number().nullable(),
    details: z.record(z.unknown()).nullable(),
  })
  .openapi("AuditEntry");

export const AuditListResponse = z.object({ entries: z.array(AuditEntrySchema) });

const auditRoute = createRoute({
  method: "get",
  path: "/audit",
  summary: "The audit log, newest first; page with `before`",
  request: {
    query: z.object({
      limit: z.coerce.number().int().min(1).max(1000).default(100),
      before: z.coerce.number().int().positive().optional(),
    }),
  },
  responses: {
    200: { description: "entries", content: { "application/json": { schema: AuditListResponse } } },
    ...errorResponses(400, 401, 404, 503),
  },
});

export type AuditRouteDeps = Pick<Services, "audit">;

export function registerAuditRoutes(app: OperatorApp, { audit }: AuditRouteDeps): void {
  app.openapi(auditRoute, (c) => {
    const { limit, before } = c.req.valid("query");
    const entries = audit.list({ limit, before }).map((e) => ({ ...e, at: new Date(e.at).toISOString() }));
    return c.json({ entries }, 200);
  });
}

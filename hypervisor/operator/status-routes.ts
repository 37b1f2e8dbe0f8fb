import { createRoute, z } from "@hono/zod-openapi";
import type { Services } from "../services.js";
import type { OperatorApp } from "./operator-env.js";
import { errorResponses } from "./schemas.js";

const StatusSchema = z
  .object({
    runtime: z.enum(["podman", "process", "fake"]),
    uptimeMs: z.number(),
    ready: z.object({ database: z.boolean(), runtime: z.boolean() }),
    users: z.number(),
    sandboxes: z.object({ running: z.number(), max: z.number() }),
  })
  .openapi("Status");

const statusRoute = createRoute({
  method: "get",
  path: "/status",
  summary: "Daemon health, runtime and capacity",
  responses: {
    200: { description: "status", content: { "application/json": { schema: StatusSchema } } },
    ...errorResponses(401),
  },
});

export function registerStatusRoutes(app: OperatorApp, services: Services): void {
  app.openapi(statusRoute, async (c) => {
    const ready = await services.readiness();
    return c.json(
      {
        runtime: services.runtime.kind,
        uptimeMs: Date.now() - services.startedAt,
        ready,
        users: services.routing.users().length,
        sandboxes: { running: services.manager.runningCount(), max: services.config.maxSandboxes },
      },
      200,
    );
  });
}

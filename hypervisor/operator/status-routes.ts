import { createRoute, z } from "@hono/zod-openapi";
import type { Config } from "../config.js";
import type { Services } from "../services.js";
import type { OperatorApp } from "./operator-env.js";
import { errorResponses } from "./schemas.js";

export const StatusSchema = z
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

export type StatusRouteDeps = Pick<Services, "readiness" | "runtime" | "routing" | "manager" | "startedAt"> & { config: Pick<Config, "maxSandboxes"> };

export function registerStatusRoutes(app: OperatorApp, deps: StatusRouteDeps): void {
  const { readiness, runtime, routing, manager, startedAt, config } = deps;
  app.openapi(statusRoute, async (c) => {
    const ready = await readiness();
    return c.json(
      {
        runtime: runtime.kind,
        uptimeMs: Date.now() - startedAt,
        ready,
        users: routing.users().length,
        sandboxes: { running: manager.runningCount(), max: config.maxSandboxes },
      },
      200,
    );
  });
}

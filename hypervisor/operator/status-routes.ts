import { createRoute, z } from "@hono/zod-openapi";
import type { Config } from "../config.js";
import type { SandboxStatus } from "../sandboxes/sandbox-status.js";
import type { Services } from "../services.js";
import type { OperatorApp } from "./operator-env.js";
import { errorResponses } from "./schemas.js";

export const StatusSchema = z
  .object({
    runtime: z.enum(["podman", "process", "fake"]),
    uptimeMs: z.number(),
    ready: z.object({ database: z.boolean(), runtime: z.boolean() }),
    users: z.number(),
    /** Counted from the same listing as GET /sandboxes, so the two always agree. */
    sandboxes: z.object({
      running: z.number(),
      frozen: z.number(),
      unhealthy: z.number(),
      starting: z.number(),
      stopped: z.number(),
      notStarted: z.number(),
      max: z.number(),
    }),
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

export type StatusRouteDeps = Pick<Services, "readiness" | "runtime" | "users" | "manager" | "sandboxStatus" | "startedAt"> & {
  config: Pick<Config, "maxSandboxes">;
};

export function registerStatusRoutes(app: OperatorApp, deps: StatusRouteDeps): void {
  const { readiness, runtime, users, manager, sandboxStatus, startedAt, config } = deps;
  app.openapi(statusRoute, async (c) => {
    const ready = await readiness();
    // With the runtime down there is no listing: the counts are the manager's own view.
    const rows = ready.runtime ? await sandboxStatus.status().catch(() => undefined) : undefined;
    const count = (test: (s: SandboxStatus) => boolean) => rows?.filter(test).length ?? 0;
    return c.json(
      {
        runtime: runtime.kind,
        uptimeMs: Date.now() - startedAt,
        ready,
        users: users.users().length,
        sandboxes: {
          running: rows ? count((s) => s.state === "running") : manager.runningCount(),
          frozen: rows ? count((s) => s.state === "frozen") : manager.counts().frozen,
          unhealthy: count((s) => s.health === "unhealthy"),
          starting: rows ? count((s) => s.state === "starting") : manager.counts().starting,
          stopped: count((s) => s.state === "stopped"),
          notStarted: count((s) => s.state === "not started"),
          max: config.maxSandboxes,
        },
      },
      200,
    );
  });
}

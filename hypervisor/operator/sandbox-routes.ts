import { createRoute, z } from "@hono/zod-openapi";
import { HypervisorError } from "../errors.js";
import type { Services } from "../services.js";
import { audited } from "./audited.js";
import type { OperatorApp } from "./operator-env.js";
import { UserName } from "../http/user-name.js";
import { errorResponses, RoleName, SandboxStatusSchema } from "./schemas.js";

export const SandboxListResponse = z.object({ sandboxes: z.array(SandboxStatusSchema) });
export const SandboxResponse = z.object({ sandbox: SandboxStatusSchema });

const listRoute = createRoute({
  method: "get",
  path: "/sandboxes",
  summary: "Every user's live and dev sandbox with its state",
  request: { query: z.object({ user: UserName.optional() }) },
  responses: {
    200: { description: "sandboxes", content: { "application/json": { schema: SandboxListResponse } } },
    ...errorResponses(400, 401, 404, 503),
  },
});

const actionRoute = createRoute({
  method: "post",
  path: "/sandboxes/{user}/{role}/{action}",
  summary: "Start, stop or restart one sandbox",
  request: { params: z.object({ user: UserName, role: RoleName, action: z.enum(["start", "stop", "restart"]) }) },
  responses: {
    200: { description: "done", content: { "application/json": { schema: SandboxResponse } } },
    ...errorResponses(400, 401, 404, 503),
  },
});

export type SandboxRouteDeps = Pick<Services, "manager" | "routing" | "audit">;

export function registerSandboxRoutes(app: OperatorApp, deps: SandboxRouteDeps): void {
  const { manager, routing, audit } = deps;

  const requireUser = (user: string) => {
    if (!routing.hasUser(user)) throw new HypervisorError("not_found", `no user ${user}`, { user });
  };

  app.openapi(listRoute, async (c) => {
    const { user } = c.req.valid("query");
    if (user) requireUser(user);
    return c.json({ sandboxes: await manager.status(user ? [user] : undefined) }, 200);
  });

  app.openapi(actionRoute, async (c) => {
    const { user, role, action } = c.req.valid("param");
    requireUser(user);
    // The status is read inside the audited step, so the audit records what the caller is told.
    const sandbox = await audited(audit, c, `sandbox.${action}`, `${user}/${role}`, async () => {
      if (action === "start") await manager.ensure(user, role);
      else if (action === "stop") await manager.stop(user, role);
      else await manager.restart(user, role);
      return (await manager.status([user])).find((s) => s.role === role)!;
    });
    return c.json({ sandbox }, 200);
  });
}

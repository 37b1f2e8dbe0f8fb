import { createRoute, z } from "@hono/zod-openapi";
import { asHypervisorError, HypervisorError } from "../errors.js";
import { DEFAULT_LOG_TAIL, MAX_LOG_TAIL, noLogsYet } from "../sandboxes/sandbox-manager.js";
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

const logsRoute = createRoute({
  method: "get",
  path: "/sandboxes/{user}/{role}/logs",
  summary: "The sandbox's stdout and stderr, oldest first",
  description:
    "One line per line of output. With `follow=true` the answer streams: the last `tail` lines, then each new line " +
    "until the sandbox stops or the caller goes away.",
  request: {
    params: z.object({ user: UserName, role: RoleName }),
    query: z.object({
      tail: z.coerce.number().int().min(0).max(MAX_LOG_TAIL).default(DEFAULT_LOG_TAIL).openapi({ description: "the last N lines" }),
      follow: z.enum(["true", "false"]).default("false").openapi({ description: "keep streaming new lines" }),
    }),
  },
  responses: {
    200: { description: "the lines, text/plain (streamed with follow=true)", content: { "text/plain": { schema: z.string() } } },
    ...errorResponses(400, 401, 404, 503),
  },
});

export type SandboxRouteDeps = Pick<Services, "manager" | "sandboxStatus" | "users" | "audit">;

export function registerSandboxRoutes(app: OperatorApp, deps: SandboxRouteDeps): void {
  const { manager, sandboxStatus, users, audit } = deps;

  const requireUser = (user: string) => {
    if (!users.hasUser(user)) throw new HypervisorError("not_found", `no user ${user} (hypervisorctl users list)`, { user });
  };

  app.openapi(listRoute, async (c) => {
    const { user } = c.req.valid("query");
    if (user) requireUser(user);
    return c.json({ sandboxes: await sandboxStatus.status(user ? [user] : undefined) }, 200);
  });

  app.openapi(logsRoute, async (c) => {
    const { user, role } = c.req.valid("param");
    const { tail, follow } = c.req.valid("query");
    requireUser(user);
    const headers = { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store", "x-content-type-options": "nosniff" };
    if (follow !== "true") {
      // Bounded by the tail: read whole, so a failure is still an error answer, not a cut stream.
      let text = "";
      for await (const line of manager.logs(user, role, { tail })) text += `${line}\n`;
      return c.body(text, 200, headers) as never;
    }
    // The stream starts only once the sandbox is known to exist, so "never started" is a 404.
    const state = (await sandboxStatus.status([user])).find((s) => s.role === role)?.state;
    if (state === "not started") throw noLogsYet(user, role);
    const stop = new AbortController();
    const lines = manager.logs(user, role, { tail, follow: true, signal: stop.signal })[Symbol.asyncIterator]();
    const encoder = new TextEncoder();
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          const next = await lines.next();
          if (next.done) controller.close();
          else controller.enqueue(encoder.encode(`${next.value}\n`));
        } catch (err) {
          // The 200 is out: cutting the stream is how the caller learns it broke off.
          c.get("log").warn({ err: asHypervisorError(err).cause ?? err, user, role }, "log stream failed");
          controller.error(err);
        }
      },
      cancel() {
        stop.abort();
      },
    });
    return new Response(body, { status: 200, headers }) as never;
  });

  app.openapi(actionRoute, async (c) => {
    const { user, role, action } = c.req.valid("param");
    requireUser(user);
    // The status is read inside the audited step, so the audit records what the caller is told.
    const sandbox = await audited(audit, c, `sandbox.${action}`, `${user}/${role}`, async () => {
      try {
        if (action === "start") await manager.ensure(user, role);
        else if (action === "stop") await manager.stop(user, role);
        else await manager.restart(user, role);
      } catch (err) {
        const e = asHypervisorError(err);
        if (e.code !== "start_timeout") throw err;
        // The reason is in what the sandbox printed: say where to read it.
        throw new HypervisorError(e.code, `${e.message} (see hypervisorctl logs ${user} ${role})`, e.details, { cause: err });
      }
      return (await sandboxStatus.status([user])).find((s) => s.role === role)!;
    });
    return c.json({ sandbox }, 200);
  });
}

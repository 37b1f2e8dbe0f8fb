import { createRoute, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import { isIP } from "node:net";
import { HypervisorError } from "../errors.js";
import type { HostFleet } from "../hosts/host-fleet.js";
import type { MoveResult } from "../operations/user-moves.js";
import { UserName, USER_NAME } from "../http/user-name.js";
import { parsePodmanUrl } from "../runtime/podman-url.js";
import type { Services } from "../services.js";
import { audited } from "./audited.js";
import { batchResponse, batchSchemas, type BatchRun } from "./batch-response.js";
import type { OperatorApp, OperatorEnv } from "./operator-env.js";
import { errorResponses } from "./schemas.js";

export const HostSchema = z
  .object({
    name: z.string(),
    url: z.string(),
    address: z.string(),
    capacity: z.number(),
    state: z.enum(["ready", "cordoned", "draining", "unreachable"]),
    users: z.number(),
    sandboxes: z.number().nullable(),
    lastError: z.string().nullable(),
    egress: z
      .object({
        mode: z.enum(["gateway", "none", "open"]),
        enforcedBy: z.enum(["hypervisor", "host-firewall"]),
      })
      .nullable()
      .openapi({
        description:
          "the egress mode this host's sandboxes are held to, and by whom: the hypervisor's own kernel (its own host), or the host's own firewall (deploy/sandbox-host/firewall.sh), which the hypervisor cannot verify",
      }),
  })
  .openapi("Host");
export const HostListResponse = z.object({ hosts: z.array(HostSchema) });
export const HostResponse = z.object({ host: HostSchema });

export const MoveResultSchema = z
  .object({
    user: z.string(),
    ok: z.boolean(),
    from: z.string().nullable(),
    to: z.string().nullable(),
    durationMs: z.number(),
    error: z.object({ code: z.string(), message: z.string() }).optional(),
  })
  .openapi("MoveResult");
/** The JSON answer of a drain, and one line of its `application/x-ndjson` progress: each user's move as it finishes, then the summary, or the error. */
const { answer: DrainResultSchema, line: DrainProgressLineSchema } = batchSchemas("Drain", MoveResultSchema);

// Host names share the user names' alphabet: they appear in logs, metrics labels and URLs.
const HostName = z.string().regex(USER_NAME, "a host name: 1-32 of a-z, 0-9 and inner '-'").openapi({ example: "sandbox-1" });
const PodmanUrlField = z
  .string()
  .max(512)
  .superRefine((value, ctx) => {
    try {
      parsePodmanUrl(value);
    } catch (err) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, message: (err as Error).message });
    }
  })
  .openapi({ example: "ssh://hypervisor@10.0.0.2/run/podman/podman.sock" });
const AddHostBody = z
  .object({
    name: HostName,
    url: PodmanUrlField,
    address: z
      .string()
      .refine((a) => isIP(a) !== 0, "an IP address: where the host publishes sandbox ports")
      .openapi({ example: "10.0.0.2" }),
    capacity: z.number().int().min(2).max(100_000),
  })
  .strict();
const MoveBody = z.object({ host: HostName }).strict();

const listRoute = createRoute({
  method: "get",
  path: "/hosts",
  summary: "Every Podman host with its state, users and sandboxes",
  responses: { 200: { description: "hosts", content: { "application/json": { schema: HostListResponse } } }, ...errorResponses(401) },
});
const addRoute = createRoute({
  method: "post",
  path: "/hosts",
  summary: "Register a Podman host (it must answer a ping first)",
  request: { body: { required: true, content: { "application/json": { schema: AddHostBody } } } },
  responses: {
    201: { description: "registered", content: { "application/json": { schema: HostResponse } } },
    ...errorResponses(400, 401, 409, 413),
  },
});
const stateRoute = createRoute({
  method: "post",
  path: "/hosts/{name}/{action}",
  summary: "Cordon (no new users) or uncordon a host",
  request: { params: z.object({ name: HostName, action: z.enum(["cordon", "uncordon"]) }) },
  responses: { 200: { description: "done", content: { "application/json": { schema: HostResponse } } }, ...errorResponses(400, 401, 404, 409) },
});
const drainRoute = createRoute({
  method: "post",
  path: "/hosts/{name}/drain",
  summary: "Cordon a host and move its users off it, one by one",
  description: "Send `Accept: application/x-ndjson` for one line per user as each move finishes (`type: result`), then a summary line (`type: summary`).",
  request: { params: z.object({ name: HostName }) },
  responses: {
    200: {
      description: "every user moved (JSON), or the progress stream (NDJSON)",
      content: { "application/json": { schema: DrainResultSchema }, "application/x-ndjson": { schema: DrainProgressLineSchema } },
    },
    207: { description: "some users could not be moved", content: { "application/json": { schema: DrainResultSchema } } },
    ...errorResponses(400, 401, 404, 409),
  },
});
const removeRoute = createRoute({
  method: "delete",
  path: "/hosts/{name}",
  summary: "Remove a host that holds no user",
  request: { params: z.object({ name: HostName }) },
  responses: { 204: { description: "removed" }, ...errorResponses(400, 401, 404, 409) },
});
const moveRoute = createRoute({
  method: "post",
  path: "/users/{user}/move",
  summary: "Move a user's sandboxes and data to another host; on failure the user stays where they were",
  request: { params: z.object({ user: UserName }), body: { required: true, content: { "application/json": { schema: MoveBody } } } },
  responses: {
    200: { description: "moved", content: { "application/json": { schema: MoveResultSchema } } },
    ...errorResponses(400, 401, 404, 409, 413, 503, 504),
  },
});

export type HostRouteDeps = Pick<Services, "fleet" | "userMoves" | "audit">;

export function registerHostRoutes(app: OperatorApp, deps: HostRouteDeps): void {
  const { fleet: hosts, userMoves, audit } = deps;
  const fleet = (): HostFleet => {
    if (!hosts) throw new HypervisorError("conflict", "hosts are Podman API endpoints: they need HYPERVISOR_RUNTIME=podman");
    return hosts;
  };
  const view = async (name: string) => (await fleet().hosts()).find((h) => h.name === name)!;

  app.openapi(listRoute, async (c) => c.json({ hosts: hosts ? await hosts.hosts() : [] }, 200));
  // Before the cordon/uncordon route, whose {action} would otherwise refuse "drain". The handler
  // answers with a plain Response (JSON, or NDJSON for live progress), which the typed route
  // helpers cannot express; the schemas above still document both for /openapi.json.
  app.openapi(drainRoute, (c) => drain(c, c.req.valid("param").name) as never);

  app.openapi(addRoute, async (c) => {
    const body = c.req.valid("json");
    const host = await audited(audit, c, "host.add", body.name, async () => {
      await fleet().addHost(body);
      return view(body.name);
    });
    return c.json({ host }, 201);
  });

  app.openapi(stateRoute, async (c) => {
    const { name, action } = c.req.valid("param");
    const host = await audited(audit, c, `host.${action}`, name, async () => {
      fleet().setState(name, action === "cordon" ? "cordoned" : "ready");
      return view(name);
    });
    return c.json({ host }, 200);
  });

  app.openapi(removeRoute, async (c) => {
    const { name } = c.req.valid("param");
    await audited(audit, c, "host.remove", name, async () => fleet().removeHost(name));
    return c.body(null, 204);
  });

  app.openapi(moveRoute, async (c) => {
    const { user } = c.req.valid("param");
    const { host } = c.req.valid("json");
    const result = await audited(
      audit,
      c,
      "user.move",
      user,
      () => userMoves.move(user, host),
      (r) => ({ outcome: r.ok ? "ok" : "error", details: { from: r.from, to: r.to, ...(r.error ? { code: r.error.code } : {}) } }),
    );
    if (result.error) throw new HypervisorError(result.error.code as never, result.error.message, { user, from: result.from, to: result.to });
    return c.json(result, 200);
  });

  async function drain(c: Context<OperatorEnv>, name: string): Promise<Response> {
    // Refused as a whole (no such host) here, before the stream opens; draining takes no new users from then on.
    const draining = userMoves.drain(name);
    const run: BatchRun<MoveResult, never> = (on) =>
      audited(
        audit,
        c,
        "host.drain",
        name,
        async () => (await draining.run((r) => on.result(r))).results,
        (results) => ({
          outcome: results.every((r) => r.ok) ? "ok" : "error",
          details: { users: results.length, failed: results.filter((r) => !r.ok).length },
        }),
      );
    return batchResponse(c, run, { action: "host.drain" });
  }
}

import { createRoute, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import { UserName } from "../http/user-name.js";
import type { UserResult } from "../releases/release-controller.js";
import type { StartProgress } from "../sandboxes/sandbox-manager.js";
import type { Services } from "../services.js";
import { audited } from "./audited.js";
import { batchResponse, batchSchemas, type BatchRun } from "./batch-response.js";
import type { OperatorApp, OperatorEnv } from "./operator-env.js";
import { errorResponses } from "./schemas.js";

const Placement = z.object({ slot: z.enum(["a", "b"]), generation: z.number() });
export const UserResultSchema = z
  .object({
    user: z.string(),
    ok: z.boolean(),
    from: Placement.optional(),
    to: Placement.optional(),
    path: z.enum(["warm", "cold"]).optional(),
    snapshot: z.string().optional().openapi({
      description: "promote: the pre-promote snapshot (the rollback point); rollback with data: the snapshot restored; fork: the copy of live's data",
    }),
    kept: z.string().optional().openapi({ description: "the snapshot that keeps the data a restore replaced" }),
    backedOut: z.boolean().optional().openapi({ description: "promote: the new generation was not healthy in time; live runs the old one on its old data" }),
    durationMs: z.number(),
    error: z.object({ code: z.string(), message: z.string() }).optional(),
  })
  .openapi("UserResult");
/** While a user's sandbox starts: how it goes, with the failed health probes so far. */
export const StartProgressSchema = z.object({
  user: z.string(),
  slot: z.enum(["a", "b"]),
  phase: z.enum(["creating", "starting", "waiting for health", "healthy"]),
  attempts: z.number(),
  elapsedMs: z.number(),
  lastAnswer: z.string().optional().describe("what GET /health last answered, while waiting for health"),
});
/** The JSON answer, and one line of `application/x-ndjson` progress: a user's progress or result, then the summary, or the error. */
const { answer: ReleaseResultSchema, line: ReleaseProgressLineSchema } = batchSchemas("Release", UserResultSchema, StartProgressSchema);

const Users = z.array(UserName).min(1).max(10_000).optional();
const ndjsonNote =
  "Send `Accept: application/x-ndjson` for one line per user as each finishes (`type: result`), then a summary line (`type: summary`); " +
  "while a user's sandbox starts, `type: progress` lines say how it goes (creating, starting, waiting for health with the failed probes so far and what /health last answered, healthy); " +
  "a call refused as a whole once the stream has begun ends with `{ type: error, error: { code, message, requestId } }` instead.";

const release = (path: string, summary: string, body: z.ZodTypeAny) =>
  createRoute({
    method: "post",
    path,
    summary,
    description: ndjsonNote,
    request: { body: { required: true, content: { "application/json": { schema: body } } } },
    responses: {
      200: {
        description: "every user succeeded (JSON), or the progress stream (NDJSON)",
        content: { "application/json": { schema: ReleaseResultSchema }, "application/x-ndjson": { schema: ReleaseProgressLineSchema } },
      },
      207: { description: "some users failed", content: { "application/json": { schema: ReleaseResultSchema } } },
      ...errorResponses(400, 401, 404, 409, 413, 503, 504),
    },
  });

const DeployBody = z
  .object({
    generation: z.number().int().positive(),
    users: Users,
    withLiveData: z.boolean().default(false).openapi({ description: "then give each dev a copy of live's data (a fork)" }),
  })
  .strict();
const SwapBody = z.object({ users: Users, force: z.boolean().default(false) }).strict();
const RollbackBody = z
  .object({
    users: Users,
    to: z.number().int().positive().optional(),
    data: z
      .boolean()
      .default(false)
      .openapi({ description: "also the data: the target generation's pre-promote snapshot, live's data now kept as pre-rollback" }),
  })
  .strict();
const PromoteBody = z.object({ users: Users }).strict();

// The handlers return a plain Response (JSON, or NDJSON for live progress), which the typed
// route helpers cannot express; the schemas above still document both for /openapi.json.
export type ReleaseRouteDeps = Pick<Services, "releases" | "dataReleases" | "users" | "audit" | "manager">;

export function registerReleaseRoutes(app: OperatorApp, deps: ReleaseRouteDeps): void {
  const { releases, dataReleases, users: directory } = deps;
  app.openapi(release("/deploy", "Put a generation into each user's dev slot and wait until healthy", DeployBody), (c) => {
    const { generation, users, withLiveData } = c.req.valid("json") as z.infer<typeof DeployBody>;
    return respond(
      c,
      deps,
      withLiveData ? "deploy.with-live-data" : "deploy",
      `generation ${generation}`,
      () => directory.resolveUsers(users),
      withLiveData
        ? (list, on) =>
            releases.deploy(generation, list).then((deployed) =>
              Promise.all(
                deployed.map(async (r) => {
                  // Each deployed dev then gets a copy of live's data; its result says both.
                  const forked = r.ok ? await dataReleases.fork(r.user) : undefined;
                  const result = forked ? { ...forked, from: r.from, to: r.to, durationMs: r.durationMs + forked.durationMs } : r;
                  on(result);
                  return result;
                }),
              ),
            )
        : (list, on) => releases.deploy(generation, list, on),
    ) as never;
  });
  app.openapi(release("/swap", "Exchange live and dev, onto a healthy dev only unless force", SwapBody), (c) => {
    const { users, force } = c.req.valid("json") as z.infer<typeof SwapBody>;
    return respond(
      c,
      deps,
      force ? "swap.force" : "swap",
      "routes",
      () => directory.resolveUsers(users),
      (list, on) => releases.swap(list, force, on),
    ) as never;
  });
  app.openapi(release("/rollback", "Live back to the newest known-good generation (or `to`) within the deadline", RollbackBody), (c) => {
    const { users, to, data } = c.req.valid("json") as z.infer<typeof RollbackBody>;
    return respond(
      c,
      deps,
      data ? "rollback.data" : "rollback",
      to ? `generation ${to}` : "known-good",
      () => directory.resolveUsers(users),
      (list, on) => (data ? dataReleases.rollback(list, to, on) : releases.rollback(list, to, on)),
    ) as never;
  });
  app.openapi(
    release("/promote", "Dev's generation takes over live on live's own data (pre-promote snapshot first; backed out if not healthy in time)", PromoteBody),
    (c) => {
      const { users } = c.req.valid("json") as z.infer<typeof PromoteBody>;
      return respond(
        c,
        deps,
        "promote",
        "live",
        () => directory.resolveUsers(users),
        (list, on) => dataReleases.promote(list, on),
      ) as never;
    },
  );
}

type Run = (users: string[], onResult: (r: UserResult) => void) => Promise<UserResult[]>;

/**
 * One shape for all three: 200 when every user succeeded, 207 with the per-user results when
 * some failed, and the failure's own status (409, 504, …) when a single-user call failed; with
 * NDJSON, the starts of the users' sandboxes as progress lines too.
 */
async function respond(
  c: Context<OperatorEnv>,
  { audit, manager }: ReleaseRouteDeps,
  action: string,
  target: string,
  resolveUsers: () => string[],
  run: Run,
): Promise<Response> {
  let users: string[];
  try {
    users = resolveUsers();
  } catch (err) {
    // Refused before any user was touched (an unknown name): audited all the same, with why.
    return audited(audit, c, action, target, async () => {
      throw err;
    });
  }
  /** What the audit records of a finished call: `error` when any user failed, and which. */
  const outcomeOf = (results: UserResult[]) => {
    const failed = results.filter((r) => !r.ok);
    return {
      outcome: failed.length ? ("error" as const) : ("ok" as const),
      details: { users: results.length, failed: failed.slice(0, 50).map((r) => ({ user: r.user, code: r.error?.code })) },
    };
  };
  /** Runs and audits, whichever way the answer is sent; a call refused as a whole is audited too. */
  const execute: BatchRun<UserResult, StartProgress> = (on) =>
    audited(
      audit,
      c,
      action,
      target,
      async () => {
        const mine = new Set(users);
        const unsubscribe = manager.onStartProgress((p) => {
          if (mine.has(p.user)) on.progress(p);
        });
        try {
          return await run(users, on.result);
        } finally {
          unsubscribe();
        }
      },
      outcomeOf,
    );
  return batchResponse(c, execute, { action, soleFailureAsError: true });
}

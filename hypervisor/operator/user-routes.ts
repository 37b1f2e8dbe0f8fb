import { createRoute, z } from "@hono/zod-openapi";
import { UserName } from "../http/user-name.js";
import type { Services } from "../services.js";
import { audited } from "./audited.js";
import { ConfirmQuery, requireConfirmation } from "./confirm.js";
import type { OperatorApp } from "./operator-env.js";
import { errorResponses } from "./schemas.js";

export const UserSchema = z.object({ name: z.string(), live: z.enum(["a", "b"]), dev: z.enum(["a", "b"]), generation: z.number() }).openapi("User");

const Placement = z.object({ slot: z.enum(["a", "b"]), generation: z.number() });
export const UserEntrySchema = z
  .object({
    name: z.string(),
    createdAt: z.string(),
    /** When the operator disabled the user; null while enabled. */
    disabledAt: z.string().nullable(),
    sessions: z.number(),
    live: Placement,
    dev: Placement,
  })
  .openapi("UserEntry");
export const UserListResponse = z.object({ users: z.array(UserEntrySchema) });
export const UserChangeResponse = z.object({ user: UserEntrySchema, revokedSessions: z.number() });
export const UserRemovedResponse = z.object({ name: z.string(), removed: z.literal(true), purged: z.boolean() });
export const UserPurgedResponse = z.object({ name: z.string(), purged: z.literal(true) });
export const SessionsRevokedResponse = z.object({ user: z.string(), revokedSessions: z.number() });

const createUserRoute = createRoute({
  method: "post",
  path: "/users",
  summary: "Provision a user (both slots get the default generation)",
  request: { body: { required: true, content: { "application/json": { schema: z.object({ name: UserName }).strict() } } } },
  responses: {
    201: { description: "created", content: { "application/json": { schema: UserSchema } } },
    ...errorResponses(400, 401, 404, 409, 413, 503),
  },
});

const listUsersRoute = createRoute({
  method: "get",
  path: "/users",
  summary: "Every user, whether disabled, its open sessions and what live and dev run",
  responses: {
    200: { description: "users", content: { "application/json": { schema: UserListResponse } } },
    ...errorResponses(401),
  },
});

const userParams = z.object({ user: UserName });

const toggleRoute = (action: "disable" | "enable") =>
  createRoute({
    method: "post",
    path: `/users/{user}/${action}`,
    summary:
      action === "disable"
        ? "Disable a user: no sign-in and no proxied requests, its sessions end; sandboxes and data stay"
        : "Enable a disabled user again: it can sign in",
    request: { params: userParams },
    responses: {
      200: { description: "done", content: { "application/json": { schema: UserChangeResponse } } },
      ...errorResponses(400, 401, 404),
    },
  });

const removeRoute = createRoute({
  method: "delete",
  path: "/users/{user}",
  summary:
    "Remove a user: its sandboxes stop and go, its sessions and passkeys too; its data volumes stay unless purge=true, and its name stays reserved while they do",
  description: "With purge=true the data is deleted for good: that needs confirm=true too, or the call answers 409 confirmation_required.",
  request: { params: userParams, query: ConfirmQuery.extend({ purge: z.enum(["true", "false"]).default("false") }) },
  responses: {
    200: { description: "removed", content: { "application/json": { schema: UserRemovedResponse } } },
    ...errorResponses(400, 401, 404, 409, 503),
  },
});

const purgeRoute = createRoute({
  method: "post",
  path: "/users/{user}/purge",
  summary: "Delete the data a removed user left (removed without purge) on every runtime and host, and free its name",
  description: "Deletes data for good: needs confirm=true, or the call answers 409 confirmation_required.",
  request: { params: userParams, query: ConfirmQuery },
  responses: {
    200: { description: "purged", content: { "application/json": { schema: UserPurgedResponse } } },
    ...errorResponses(400, 401, 404, 409, 503),
  },
});

const revokeRoute = createRoute({
  method: "post",
  path: "/users/{user}/sessions/revoke",
  summary: "End every session of a user: each browser must sign in again",
  request: { params: userParams },
  responses: {
    200: { description: "revoked", content: { "application/json": { schema: SessionsRevokedResponse } } },
    ...errorResponses(400, 401, 404),
  },
});

export type UserRouteDeps = Pick<Services, "users" | "routing" | "audit" | "sessions" | "userRemoval">;

export function registerUserRoutes(app: OperatorApp, deps: UserRouteDeps): void {
  const { users, routing, audit, sessions, userRemoval } = deps;

  const entry = (name: string): z.infer<typeof UserEntrySchema> => describe(users.record(name));
  const describe = (u: { name: string; createdAt: number; disabledAt: number | null }): z.infer<typeof UserEntrySchema> => {
    const route = routing.route(u.name);
    return {
      name: u.name,
      createdAt: new Date(u.createdAt).toISOString(),
      disabledAt: u.disabledAt === null ? null : new Date(u.disabledAt).toISOString(),
      sessions: sessions.count(u.name),
      live: { slot: route.live, generation: users.slot(u.name, route.live).generationId },
      dev: { slot: route.dev, generation: users.slot(u.name, route.dev).generationId },
    };
  };

  app.openapi(createUserRoute, async (c) => {
    const { name } = c.req.valid("json");
    const user = await audited(audit, c, "user.create", name, async () => {
      (await users.prepareUser())(name);
      const route = routing.route(name);
      return { name, live: route.live, dev: route.dev, generation: routing.generationOf(name, "live") };
    });
    return c.json(user, 201);
  });

  app.openapi(listUsersRoute, (c) => c.json({ users: users.userRecords().map(describe) }, 200));

  for (const action of ["disable", "enable"] as const) {
    app.openapi(toggleRoute(action), async (c) => {
      const { user } = c.req.valid("param");
      const result = await audited(
        audit,
        c,
        `user.${action}`,
        user,
        async () => {
          users.setDisabled(user, action === "disable");
          // Disabled first, so no sign-in can slip in between; the ended sessions close their WebSockets.
          const revokedSessions = action === "disable" ? sessions.revokeUser(user, { because: "disabled" }) : 0;
          return { user: entry(user), revokedSessions };
        },
        (r) => ({ outcome: "ok", details: { revokedSessions: r.revokedSessions } }),
      );
      return c.json(result, 200);
    });
  }

  app.openapi(removeRoute, async (c) => {
    const { user } = c.req.valid("param");
    const { purge: purgeParam, confirm } = c.req.valid("query");
    const purge = purgeParam === "true";
    const removed = await audited(audit, c, purge ? "user.remove.purge" : "user.remove", user, async () => {
      users.record(user);
      if (purge) {
        requireConfirmation(
          confirm,
          `removing ${user} with purge deletes its live and dev data for good, with its sandboxes, sessions and passkeys; ` +
            "without purge the data is kept and the name reserved until users purge",
          { user },
        );
      }
      return userRemoval.remove(user, { purge });
    });
    return c.json(removed, 200);
  });

  app.openapi(purgeRoute, async (c) => {
    const { user } = c.req.valid("param");
    const { confirm } = c.req.valid("query");
    const purged = await audited(audit, c, "user.purge", user, async () => {
      // Asked only of a purge that would go ahead: an existing or unknown name gets its own answer.
      if (!users.hasUser(user) && users.removedUser(user)) {
        requireConfirmation(confirm, `purging ${user} deletes the live and dev data it left, on every host, for good, and frees the name`, { user });
      }
      return userRemoval.purge(user);
    });
    return c.json(purged, 200);
  });

  app.openapi(revokeRoute, async (c) => {
    const { user } = c.req.valid("param");
    const revokedSessions = await audited(
      audit,
      c,
      "user.sessions.revoke",
      user,
      async () => {
        entry(user);
        return sessions.revokeUser(user);
      },
      (n) => ({ outcome: "ok", details: { revokedSessions: n } }),
    );
    return c.json({ user, revokedSessions }, 200);
  });
}

import { createRoute, z } from "@hono/zod-openapi";
import { UserName } from "../http/user-name.js";
import type { Services } from "../services.js";
import { audited } from "./audited.js";
import type { OperatorApp } from "./operator-env.js";
import { errorResponses } from "./schemas.js";

export const UserSchema = z.object({ name: z.string(), live: z.enum(["a", "b"]), dev: z.enum(["a", "b"]), generation: z.number() }).openapi("User");

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

export type UserRouteDeps = Pick<Services, "routing" | "audit">;

export function registerUserRoutes(app: OperatorApp, deps: UserRouteDeps): void {
  const { routing, audit } = deps;
  app.openapi(createUserRoute, async (c) => {
    const { name } = c.req.valid("json");
    const user = await audited(audit, c, "user.create", name, async () => {
      const route = (await routing.prepareUser())(name);
      return { name, live: route.live, dev: route.dev, generation: routing.generationOf(name, "live") };
    });
    return c.json(user, 201);
  });
}

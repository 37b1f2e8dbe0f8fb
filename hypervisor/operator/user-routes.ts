import { createRoute, z } from "@hono/zod-openapi";
import { UserName } from "../http/user-name.js";
import type { Services } from "../services.js";
import { audited } from "./audited.js";
import type { OperatorApp } from "./operator-env.js";
import { errorResponses } from "./schemas.js";

const UserSchema = z
  .object({ name: z.string(), live: z.enum(["a", "b"]), dev: z.enum(["a", "b"]), generation: z.number() })
  .openapi("User");

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

export function registerUserRoutes(app: OperatorApp, services: Services): void {
  app.openapi(createUserRoute, async (c) => {
    const { name } = c.req.valid("json");
    const user = await audited(services.audit, c, "user.create", name, async () => {
      const route = (await services.routing.prepareUser())(name);
      return { name, live: route.live, dev: route.dev, generation: services.routing.generationOf(name, "live") };
    });
    return c.json(user, 201);
  });
}

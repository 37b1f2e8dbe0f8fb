import { z } from "@hono/zod-openapi";
import { USER_NAME } from "../runtime/container-runtime.js";

/** A user name as every API takes it (operator routes, /auth): it names the user's sandboxes. */
export const UserName = z.string().regex(USER_NAME, "a user name: 1-32 of a-z, 0-9 and inner '-'").openapi({ example: "alice" });

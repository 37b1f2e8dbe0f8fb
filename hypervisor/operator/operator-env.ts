import type { OpenAPIHono } from "@hono/zod-openapi";
import type { AppEnv } from "../http/error-handling.js";

/** What the operator API knows of every request: who calls (`actor`) and from where (`source`). */
export type OperatorEnv = AppEnv & { Variables: { actor: string; source: string } };

/** The operator API's app, as the route files register onto it. */
export type OperatorApp = OpenAPIHono<OperatorEnv>;

import type { OpenAPIHono } from "@hono/zod-openapi";
import type { AppEnv } from "../http/error-handling.js";

/**
 * What the operator API knows of every request: who calls (`actor`), from where (`source`), and
 * whether an action took it over and audits it (`audited`; otherwise a refusal is audited).
 */
export type OperatorEnv = AppEnv & { Variables: { actor: string; source: string; audited: boolean } };

/** The operator API's app, as the route files register onto it. */
export type OperatorApp = OpenAPIHono<OperatorEnv>;

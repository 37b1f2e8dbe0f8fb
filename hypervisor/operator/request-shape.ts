import type { Context, MiddlewareHandler } from "hono";
import type { Logger } from "pino";
import { HypervisorError } from "../errors.js";
import { errorResponse, type AppEnv } from "../http/error-handling.js";
import type { OperatorApp } from "./operator-env.js";

/**
 * A request body is JSON, said so by its content type: a body of another type (curl -d sends a
 * form's) answers 415 saying what to send, rather than being read as no body at all and refused
 * for a missing field. A call without a body (most POSTs that act on a path) needs no type.
 */
export function requireJsonBodies(): MiddlewareHandler {
  return async function requireJsonBodies(c, next) {
    const length = Number(c.req.header("content-length") ?? "0");
    const hasBody = length > 0 || c.req.header("transfer-encoding") !== undefined;
    if (hasBody && !/^application\/json\s*(;|$)/i.test(c.req.header("content-type") ?? "")) {
      throw new HypervisorError(
        "unsupported_media_type",
        `the operator API reads JSON bodies only: send Content-Type: application/json (curl: -H 'content-type: application/json'), not '${(c.req.header("content-type") ?? "none").slice(0, 80)}'`,
      );
    }
    await next();
  };
}

/**
 * A path the API knows, asked with a method it does not take: 405 with `Allow`, not 404 (which
 * would say the path does not exist). Installed as the app's not-found handler, after every route.
 */
export function answerWrongMethods(app: OperatorApp, log: Logger): void {
  const routes = app.routes
    .filter((r) => r.method !== "ALL")
    .map((r) => ({
      method: r.method.toUpperCase(),
      pattern: new RegExp(`^${r.path.replace(/[.*+?^${}()|[\]\\]/g, "\\$&").replace(/:[A-Za-z_]\w*/g, "[^/]+")}$`),
    }));
  app.notFound((c) => {
    const allowed = [...new Set(routes.filter((r) => r.pattern.test(c.req.path)).map((r) => r.method))];
    if (allowed.length === 0) {
      return errorResponse(c as unknown as Context<AppEnv>, new HypervisorError("not_found", `no route for ${c.req.method} ${c.req.path}`), log);
    }
    if (allowed.includes("GET")) allowed.push("HEAD");
    const allow = allowed.join(", ");
    const res = errorResponse(
      c as unknown as Context<AppEnv>,
      new HypervisorError("method_not_allowed", `${c.req.path} takes ${allow}, not ${c.req.method} (GET /openapi.json lists every route)`, { allow: allowed }),
      log,
    );
    res.headers.set("allow", allow);
    return res;
  });
}

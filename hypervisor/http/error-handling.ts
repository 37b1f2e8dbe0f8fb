import type { Context, Env, Hono, MiddlewareHandler } from "hono";
import { HTTPException } from "hono/http-exception";
import type { Logger } from "pino";
import { inRequest } from "../logger.js";
import { asHypervisorError, HypervisorError, renderError, type ErrorCode } from "../errors.js";

/**
 * What every request of the Hono apps carries: its id (hono's request-id middleware: the caller's
 * X-Request-Id when it is a plain token, else a fresh UUID, echoed in the answer) and a logger
 * that writes it on every line.
 */
export type AppEnv = Env & { Variables: { requestId: string; log: Logger } };

/**
 * Runs each request in its own log scope, installed after hono's `requestId()`: every line logged
 * for the request, by its handler or by any service it calls, its audit row and its error body
 * then name the same id.
 */
export function requestLogger(log: Logger): MiddlewareHandler<AppEnv> {
  return async function requestLogger(c, next) {
    // The logger itself stays unbound: the request scope adds the id to its lines, and to those of
    // every service the request calls.
    c.set("log", log);
    await inRequest(c.get("requestId"), next);
  };
}

const HTTP_CODES: Record<number, ErrorCode> = {
  400: "bad_request",
  401: "unauthorized",
  403: "forbidden",
  404: "not_found",
  413: "payload_too_large",
  415: "unsupported_media_type",
};

/** Any error as the HypervisorError the caller is answered with: its code is the one every record of the call names. */
export function callerError(err: unknown): HypervisorError {
  // Hono's own refusals (malformed JSON, body too large) are the caller's mistakes.
  if (err instanceof HTTPException && HTTP_CODES[err.status]) return new HypervisorError(HTTP_CODES[err.status]!, err.message || "bad request");
  return asHypervisorError(err);
}

/** A page for a browser's refused request: its body and the headers it needs (content type, CSP). */
export type HtmlErrorPage = (err: HypervisorError, requestId: string) => { body: string; headers: Record<string, string> };

/** A browser navigating names text/html in Accept; scripts and API clients ask for JSON or anything. */
function acceptsHtml(accept: string | undefined): boolean {
  return /\btext\/html\b/i.test(accept ?? "");
}

/**
 * Renders any error as the one JSON error shape, or, for a browser when a page renderer is
 * given, as a readable page with the same status; internal faults are logged, never shown.
 */
export function errorResponse(c: Context<AppEnv>, err: unknown, log: Logger, htmlPage?: HtmlErrorPage): Response {
  const requestId = c.get("requestId") ?? "-";
  const e = callerError(err);
  // Inside the request's scope when the failure came after the middleware; before it, named here.
  const requestLog = c.get("log") ?? log.child({ requestId });
  if (e.status >= 500) requestLog.error({ err: e.cause ?? e, code: e.code, path: c.req.path }, "request failed");
  const { status, headers, body } = renderError(e, requestId);
  if (htmlPage && acceptsHtml(c.req.header("accept"))) {
    const page = htmlPage(e, requestId);
    return c.body(page.body, status as 400, { ...headers, ...page.headers });
  }
  return c.body(body, status as 400, headers);
}

export function installErrorHandling<E extends AppEnv>(app: Hono<E>, log: Logger, htmlPage?: HtmlErrorPage): void {
  app.onError((err, c) => errorResponse(c as unknown as Context<AppEnv>, err, log, htmlPage));
  app.notFound((c) =>
    errorResponse(c as unknown as Context<AppEnv>, new HypervisorError("not_found", `no route for ${c.req.method} ${c.req.path}`), log, htmlPage),
  );
}

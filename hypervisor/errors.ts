/**
 * One error taxonomy for the whole daemon: code → HTTP status, mapped once at each boundary.
 * Messages are written for the caller; they never carry stack traces or secrets.
 */
export const errorStatus = {
  bad_request: 400,
  validation_failed: 400,
  unauthorized: 401,
  forbidden: 403,
  /** Signed in, but this change needs a fresh passkey assertion made for it (DESIGN §5 step-up). */
  step_up_required: 403,
  not_found: 404,
  /** A known path asked with a method it does not take; the answer's Allow header names those it does. */
  method_not_allowed: 405,
  conflict: 409,
  unhealthy_target: 409,
  no_known_good: 409,
  /** A step that cannot be undone, or that leaves users without a way back: asked again with ?confirm=true. */
  confirmation_required: 409,
  payload_too_large: 413,
  unsupported_media_type: 415,
  rate_limited: 429,
  internal: 500,
  upstream_unreachable: 502,
  runtime_unavailable: 503,
  capacity_exhausted: 503,
  start_timeout: 503,
  not_ready: 503,
  deadline_exceeded: 504,
} as const;

export type ErrorCode = keyof typeof errorStatus;

export class HypervisorError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details?: Record<string, unknown>,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "HypervisorError";
  }

  get status(): number {
    return errorStatus[this.code];
  }
}

export interface ErrorBody {
  error: { code: ErrorCode; message: string; requestId: string; details?: Record<string, unknown> };
}

export function errorBody(err: HypervisorError, requestId: string): ErrorBody {
  return { error: { code: err.code, message: err.message, requestId, ...(err.details ? { details: err.details } : {}) } };
}

/**
 * The one rendering of an error for the wire, shared by Hono's handler, the proxy and WebSocket
 * refusals, so every refusal carries the same body and the same headers (Retry-After among them).
 */
export function renderError(err: HypervisorError, requestId: string): { status: number; headers: Record<string, string>; body: string } {
  const body = JSON.stringify(errorBody(err, requestId));
  const headers: Record<string, string> = { "content-type": "application/json", "cache-control": "no-store" };
  const retryAfter = err.details?.retryAfterSeconds;
  if (typeof retryAfter === "number") headers["retry-after"] = String(retryAfter);
  return { status: err.status, headers, body };
}

/** Anything that is not already a HypervisorError is an internal fault: hide its text. */
export function asHypervisorError(err: unknown): HypervisorError {
  if (err instanceof HypervisorError) return err;
  return new HypervisorError("internal", "internal error", undefined, { cause: err });
}

import type { Context, MiddlewareHandler } from "hono";
import type { z } from "zod";
import type { AddressSet } from "../../proxy/addresses.js";
import { clientAddressOf } from "../../proxy/headers.js";
import { HypervisorError } from "../errors.js";
import type { AppEnv } from "../http/error-handling.js";
import { validationFailed } from "../http/validation.js";

/** The client's address, for rate limits and the audit log: the same rule the proxy forwards. */
export function clientAddress(c: Context, trustedProxies: AddressSet): string {
  const peer = (c.env as { incoming?: { socket?: { remoteAddress?: string } } } | undefined)?.incoming?.socket?.remoteAddress;
  return clientAddressOf(peer, c.req.header("x-forwarded-for"), trustedProxies);
}

/**
 * State-changing requests must come from a page of the public origin (Fetch §3.2: browsers send
 * Origin on every non-GET request). This is the CSRF defence; SameSite=Lax is the second line.
 */
export function requireSameOrigin(publicOrigin: URL): MiddlewareHandler<AppEnv> {
  const expected = publicOrigin.origin;
  return async function requireSameOrigin(c, next) {
    if (c.req.method !== "GET" && c.req.method !== "HEAD" && c.req.header("origin") !== expected) {
      throw new HypervisorError("forbidden", `state-changing requests must carry Origin: ${expected}`);
    }
    await next();
  };
}

/** Reads a JSON body and validates it; malformed input is the caller's 4xx, never a 500. */
export async function readJson<T extends z.ZodTypeAny>(c: Context, schema: T): Promise<z.infer<T>> {
  const type = c.req.header("content-type") ?? "";
  if (!/^application\/json\s*(;|$)/i.test(type)) throw new HypervisorError("unsupported_media_type", "send Content-Type: application/json");
  const text = await c.req.text();
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new HypervisorError("bad_request", "the body is not valid JSON");
  }
  const result = schema.safeParse(raw);
  if (!result.success) throw validationFailed(result.error);
  return result.data as z.infer<T>;
}

/** What a browser could read as another origin, or as anything but a path (WHATWG URL §4.4). */
const NOT_A_SAME_ORIGIN_PATH = /^(?!\/)|^\/[/\\]|[\\\u0000-\u001f\u007f]/;

/**
 * Where to go after signing in: a same-origin path only. Anything that a browser could read as
 * another origin (`//host`, `/\host`, schemes, control characters) becomes "/". The check runs
 * on the input and again on the normalised path that is returned, because resolving dot
 * segments (RFC 3986 §5.2.4) turns `/.//host` or `/%2e//host` into the network-path `//host`.
 */
export function safeNextPath(next: string | undefined): string {
  if (!next || next.length > 2048 || NOT_A_SAME_ORIGIN_PATH.test(next)) return "/";
  try {
    const base = new URL("http://hv.invalid");
    const url = new URL(next, base);
    if (url.origin !== base.origin) return "/";
    const path = `${url.pathname}${url.search}${url.hash}`;
    return NOT_A_SAME_ORIGIN_PATH.test(path) ? "/" : path;
  } catch {
    return "/";
  }
}

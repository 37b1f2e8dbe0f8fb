/**
 * How sandbox code calls an outside service without holding its key: through one of the
 * operator's egress routes, `$HYPERVISOR_EGRESS_URL/<route>/...`, with this sandbox's own
 * `HYPERVISOR_EGRESS_TOKEN` as its credential; the hypervisor's gateway swaps in the real key.
 */
export interface EgressEnv {
  url: string;
  token: string;
}

export type EgressStatus = { gateway: false; message: string } | { gateway: true; routes: string[] } | { gateway: true; routes: null; message: string };

export interface RouteAnswer {
  status: number;
  contentType: string | null;
  /** The answer's start, as text: enough to see what came back. */
  body: string;
  truncated: boolean;
}

/** A route name is one path segment (the gateway's rule): nothing here can aim the call elsewhere. */
const ROUTE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const BODY_EXCERPT_BYTES = 4096;
const CALL_TIMEOUT_MS = 15_000;

export const NO_GATEWAY =
  "This sandbox was given no egress gateway (no HYPERVISOR_EGRESS_URL): the hypervisor runs with HYPERVISOR_EGRESS=none or open, so there are no routes to call.";

export function egressFromEnv(env: NodeJS.ProcessEnv): EgressEnv | null {
  const url = env.HYPERVISOR_EGRESS_URL;
  const token = env.HYPERVISOR_EGRESS_TOKEN;
  return url && token ? { url: url.replace(/\/+$/, ""), token } : null;
}

/** Which routes the operator configured: the gateway lists their names at its root. */
export async function egressStatus(egress: EgressEnv | null): Promise<EgressStatus> {
  if (!egress) return { gateway: false, message: NO_GATEWAY };
  try {
    const res = await fetch(`${egress.url}/`, { headers: auth(egress), signal: AbortSignal.timeout(CALL_TIMEOUT_MS) });
    const body = (await res.json()) as { routes?: unknown };
    if (res.ok && Array.isArray(body.routes)) return { gateway: true, routes: body.routes.filter((r): r is string => typeof r === "string") };
    return { gateway: true, routes: null, message: `the gateway answered HTTP ${res.status} when asked for its routes` };
  } catch (error) {
    return { gateway: true, routes: null, message: `the gateway did not answer: ${(error as Error).message}` };
  }
}

/** Checks what the page sent; a message for the person when it is not a route and a path. */
export function routeCallError(route: unknown, path: unknown): string | null {
  if (typeof route !== "string" || !ROUTE_NAME.test(route)) return "route: a route name (letters, digits, '.', '_' or '-')";
  if (typeof path !== "string" || !path.startsWith("/") || path.startsWith("//") || path.length > 2000 || /[\s#]/.test(path))
    return "path: starts with a single '/', no spaces, at most 2000 characters";
  return null;
}

/** One GET through a route; the answer's status, type and start, as the gateway passed them on. */
export async function callRoute(egress: EgressEnv, route: string, path: string): Promise<RouteAnswer> {
  const res = await fetch(`${egress.url}/${route}${path}`, { headers: auth(egress), redirect: "manual", signal: AbortSignal.timeout(CALL_TIMEOUT_MS) });
  const chunks: Buffer[] = [];
  let bytes = 0;
  let truncated = false;
  if (res.body) {
    for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
      chunks.push(Buffer.from(chunk));
      bytes += chunk.length;
      if (bytes > BODY_EXCERPT_BYTES) {
        truncated = true;
        break;
      }
    }
  }
  const body = Buffer.concat(chunks).subarray(0, BODY_EXCERPT_BYTES).toString("utf8");
  return { status: res.status, contentType: res.headers.get("content-type"), body, truncated };
}

/** The gateway reads the token as a bearer credential (or x-api-key), and never forwards it. */
function auth(egress: EgressEnv): Record<string, string> {
  return { authorization: `Bearer ${egress.token}` };
}

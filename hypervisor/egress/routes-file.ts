import { readFileSync } from "node:fs";
import { z } from "zod";

/**
 * One route with an injected credential (DESIGN §5b): a sandbox calls
 * `$HYPERVISOR_EGRESS_URL/<name>/...`, the gateway forwards it to `upstream` with
 * `header: value` where `{secret}` stands for the secret (the operator's, or the user's own key
 * on a `userKeys` route). The file names secrets; it never holds their values.
 */
export interface EgressRoute {
  name: string;
  /** `https://host[:port][/base path]`, no query, no credentials. */
  upstream: URL;
  /** Lower case. */
  header: string;
  value: string;
  secret: string;
  userKeys: boolean;
  rpm: number | undefined;
  concurrent: number;
  dailyRequests: number | undefined;
  dailyBytes: number | undefined;
  /** From the request's start until the upstream's response headers. */
  responseTimeoutMs: number;
  /** Longest silence of the upstream once it answered (SSE streams send keep-alives). */
  idleTimeoutMs: number;
}

/** Concurrent calls per user and route when the file names none: enough for an agent, bounded. */
export const DEFAULT_CONCURRENT = 16;
export const DEFAULT_RESPONSE_TIMEOUT_MS = 60_000;
export const DEFAULT_IDLE_TIMEOUT_MS = 300_000;

/** A route name is a path segment: `$HYPERVISOR_EGRESS_URL/<name>/...`. */
export const RouteName = z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, "lower-case letters, digits, '-' or '_', at most 63, e.g. openai");
/** A secret name is part of a credential's file name: `egress-<secret>`. */
const SecretName = z
  .string()
  .regex(/^[a-z0-9][a-z0-9_.-]{0,62}$/, "lower-case letters, digits, '-', '_' or '.', e.g. openai (read from egress-openai)")
  .refine((s) => s !== "routes" && s !== "secrets-key", "routes and secrets-key name the routes file's and the user keys' credentials");

/** Headers that are the connection's own or that the gateway sets itself: never a route's credential header. */
const RESERVED_HEADERS = new Set([
  "host",
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "content-length",
  "accept-encoding",
]);

const positive = (max: number) => z.number().int().positive().max(max);

const RouteSchema = z
  .object({
    name: RouteName,
    upstream: z
      .string()
      .url("an absolute URL, e.g. https://api.openai.com")
      .refine((u) => u.startsWith("https://"), "must start with https:// (routes talk TLS to their upstream, certificate verified)")
      .refine((u) => {
        const url = new URL(u);
        return url.username === "" && url.password === "" && url.search === "" && url.hash === "";
      }, "no credentials, query or fragment: the secret goes in the header, not the URL"),
    header: z
      .string()
      .regex(/^[A-Za-z0-9-]{1,64}$/, "a header name, e.g. authorization or x-api-key")
      .transform((h) => h.toLowerCase())
      .refine((h) => !RESERVED_HEADERS.has(h), "a header the gateway sets itself; name the credential's header"),
    value: z
      .string()
      .max(256)
      .refine((v) => v.includes("{secret}"), 'must contain {secret}, e.g. "Bearer {secret}"')
      .refine((v) => !/[\r\n\0]/.test(v), "no line breaks")
      .default("{secret}"),
    secret: SecretName,
    userKeys: z.boolean().default(false),
    rpm: positive(1_000_000).optional(),
    concurrent: positive(10_000).default(DEFAULT_CONCURRENT),
    dailyRequests: positive(1e12).optional(),
    dailyBytes: positive(Number.MAX_SAFE_INTEGER).optional(),
    responseTimeoutMs: positive(3_600_000).default(DEFAULT_RESPONSE_TIMEOUT_MS),
    idleTimeoutMs: positive(3_600_000).default(DEFAULT_IDLE_TIMEOUT_MS),
  })
  .strict();

export class RoutesFileError extends Error {}

/** Names the route (by name when it has one, else by position) and the field, as the operator wrote them. */
function describe(issue: z.ZodIssue, raw: unknown[]): string {
  const [index, field, ...rest] = issue.path;
  const entry = typeof index === "number" ? raw[index] : undefined;
  const name = entry && typeof entry === "object" && typeof (entry as { name?: unknown }).name === "string" ? (entry as { name: string }).name : undefined;
  const where = typeof index === "number" ? `route ${name === undefined ? `#${index + 1}` : `"${name}" (#${index + 1})`}` : "the file";
  const what = field === undefined ? "" : `, field "${[field, ...rest].join(".")}"`;
  const message = issue.code === "unrecognized_keys" ? `unknown field(s) ${issue.keys.join(", ")}` : issue.message;
  return `${where}${what}: ${message}`;
}

/** Parses the routes file's text; every problem is named by route and field. */
export function parseRoutes(text: string, source: string): EgressRoute[] {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new RoutesFileError(`${source}: not JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(raw)) throw new RoutesFileError(`${source}: a JSON array of routes, e.g. [{ "name": "openai", ... }]`);
  const parsed = z.array(RouteSchema).safeParse(raw);
  if (!parsed.success) throw new RoutesFileError(`${source}: ${parsed.error.issues.map((i) => describe(i, raw as unknown[])).join("; ")}`);
  const seen = new Set<string>();
  return parsed.data.map((r, i) => {
    if (seen.has(r.name)) throw new RoutesFileError(`${source}: route "${r.name}" (#${i + 1}): the name is used twice`);
    seen.add(r.name);
    return {
      ...r,
      upstream: new URL(r.upstream),
      rpm: r.rpm,
      dailyRequests: r.dailyRequests,
      dailyBytes: r.dailyBytes,
    };
  });
}

export function readRoutesFile(path: string): EgressRoute[] {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new RoutesFileError(`${path}: cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  return parseRoutes(text, path);
}

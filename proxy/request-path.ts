import type { Role } from "./target.js";

export type PathVerdict = { ok: true; path: string; query: string } | { ok: false; reason: string };

/**
 * Normalises a request target before anything routes on it (RFC 3986 §5.2.4 dot-segment
 * removal, after decoding only the encodings that could hide a dot). Encoded slashes and
 * backslashes are refused outright: they are the classic way to make a proxy and its upstream
 * disagree about the path. The upstream receives the normalised path, so both see the same.
 */
export function normalizePath(rawTarget: string | undefined): PathVerdict {
  if (!rawTarget || rawTarget[0] !== "/") return { ok: false, reason: "the request target must be an absolute path" };
  const q = rawTarget.indexOf("?");
  const rawPath = q === -1 ? rawTarget : rawTarget.slice(0, q);
  // Every request passes here; most paths have nothing to resolve and are answered as they are.
  if (!NEEDS_RESOLVING.test(rawPath)) return { ok: true, path: rawPath, query: q === -1 ? "" : rawTarget.slice(q) };
  return resolvePath(rawTarget);
}

/**
 * Without `%`, `\`, an empty segment (`//`) or a segment starting with a dot (`/.`), removing
 * dot segments and empty ones leaves a path unchanged, so normalizePath need not split it.
 */
const NEEDS_RESOLVING = /%|\\|\/\/|\/\./;

/** normalizePath's full algorithm, for any absolute request target; `request-path.test.ts` holds both to one answer. */
export function resolvePath(rawTarget: string): PathVerdict {
  const q = rawTarget.indexOf("?");
  const rawPath = q === -1 ? rawTarget : rawTarget.slice(0, q);
  const query = q === -1 ? "" : rawTarget.slice(q);
  if (/%2f|%5c|\\|%00/i.test(rawPath)) return { ok: false, reason: "encoded slashes, backslashes and NUL are not allowed in paths" };
  if (/%(?![0-9a-f]{2})/i.test(rawPath)) return { ok: false, reason: "malformed percent-encoding in path" };
  const segments = rawPath.replace(/%2e/gi, ".").split("/");
  const out: string[] = [];
  for (const segment of segments.slice(1)) {
    if (segment === "..") out.pop();
    else if (segment !== "." && segment !== "") out.push(segment);
  }
  // Keep a trailing slash: `/dev/` and `/dev` are the same sandbox but not the same page.
  const last = segments[segments.length - 1];
  const trailing = out.length > 0 && (last === "" || last === "." || last === "..");
  return { ok: true, path: `/${out.join("/")}${trailing ? "/" : ""}`, query };
}

/** `/dev` and `/dev/...` reach dev with the prefix stripped; every other path reaches live. */
export function routeOf(path: string): { role: Role; upstreamPath: string } {
  if (path === "/dev" || path.startsWith("/dev/")) return { role: "dev", upstreamPath: path.slice(4) || "/" };
  return { role: "live", upstreamPath: path };
}

const RESERVED_EXACT = new Set(["/login", "/register", "/recovery"]);

/** The hypervisor's own paths (DESIGN §4), never proxied. */
export function isReserved(path: string): boolean {
  return RESERVED_EXACT.has(path) || path.startsWith("/auth/") || path === "/auth" || path.startsWith("/_hv/") || path === "/_hv";
}

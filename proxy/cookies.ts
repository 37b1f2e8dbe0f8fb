/** The session cookie of the public origin (DESIGN §5). */
export const SESSION_COOKIE = "hv_session";
/** The host-only cookie of a sandbox origin (DESIGN §4). */
export const SANDBOX_COOKIE = "hv_sandbox";

/**
 * The hypervisor's own cookie names, bare and with the `__Host-` prefix https origins may use
 * (RFC 6265bis §4.1.3.2). A sandbox never receives them and can never set them (DESIGN §5).
 */
const OURS = new Set([SESSION_COOKIE, SANDBOX_COOKIE, `__Host-${SESSION_COOKIE}`, `__Host-${SANDBOX_COOKIE}`]);

/**
 * More hv_session cookies than this in one request count as no session at all: a page that can
 * toss cookies must not be able to push the owner's own cookie out of sight behind its own.
 */
export const MAX_SESSION_COOKIES = 4;

/** What a Cookie header holds, read once for authentication and for forwarding alike. */
export interface RequestCookies {
  /** The hv_session values in header order; at most MAX_SESSION_COOKIES + 1 are kept. */
  sessions: string[];
  /** The hv_sandbox values in header order, as many at most. */
  sandboxes: string[];
  /** Every other cookie, for the sandbox; undefined when none is left. */
  forwarded: string | undefined;
}

/** RFC 6265 §5.2 trims only SP and HTAB around names and values; String#trim would trim more than a browser does. */
function trimWsp(s: string): string {
  let start = 0;
  let end = s.length;
  while (start < end && (s.charCodeAt(start) === 0x20 || s.charCodeAt(start) === 0x09)) start++;
  while (end > start && (s.charCodeAt(end - 1) === 0x20 || s.charCodeAt(end - 1) === 0x09)) end--;
  return start === 0 && end === s.length ? s : s.slice(start, end);
}

/**
 * The one reading of a Cookie header (RFC 6265 §5.4 pairs, each name and value trimmed as §5.2
 * does): authentication and the copy a sandbox receives both come from it, so a cookie that
 * authenticates can never reach a sandbox (`hv_session =x` is hv_session in both). A pair
 * without `=` is a nameless cookie (RFC 6265bis §5.6) and is forwarded as it is.
 */
export function parseCookies(header: string | undefined): RequestCookies {
  const sessions: string[] = [];
  const sandboxes: string[] = [];
  if (!header) return { sessions, sandboxes, forwarded: undefined };
  let forwarded: string | undefined;
  for (const raw of header.split(";")) {
    const part = trimWsp(raw);
    if (!part) continue;
    const eq = part.indexOf("=");
    const name = eq < 0 ? "" : trimWsp(part.slice(0, eq));
    if (!OURS.has(name)) {
      forwarded = forwarded === undefined ? part : `${forwarded}; ${part}`;
      continue;
    }
    const into = name === SESSION_COOKIE ? sessions : name === SANDBOX_COOKIE ? sandboxes : undefined;
    if (into === undefined || into.length > MAX_SESSION_COOKIES) continue;
    let value = trimWsp(part.slice(eq + 1));
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
    into.push(value);
  }
  return { sessions, sandboxes, forwarded };
}

/** The hv_session values in a Cookie header, in order (see parseCookies). */
export function sessionTokens(header: string | undefined): string[] {
  return parseCookies(header).sessions;
}

/**
 * Whether a sandbox's Set-Cookie line would set one of our cookies, and must be dropped. The
 * name is read as a browser stores it (RFC 6265 §5.2, trimmed); a nameless cookie
 * (`=hv_session=x`, RFC 6265bis §5.6) is sent back as its bare value, which parseCookies would
 * read as `hv_session=x`, so its value is looked at as well.
 */
export function setsOurCookie(setCookie: string): boolean {
  const semicolon = setCookie.indexOf(";");
  const pair = semicolon < 0 ? setCookie : setCookie.slice(0, semicolon);
  const eq = pair.indexOf("=");
  if (eq < 0) return false;
  const name = trimWsp(pair.slice(0, eq));
  if (name) return OURS.has(name);
  const value = trimWsp(pair.slice(eq + 1));
  const inner = value.indexOf("=");
  return inner > 0 && OURS.has(trimWsp(value.slice(0, inner)));
}

/**
 * The Set-Cookie for a sandbox origin's hv_sandbox: host-only (no Domain), HttpOnly, SameSite=Lax,
 * Secure on https (DESIGN §4). No Max-Age: it ends with the browser or with its session, which
 * is checked on every request, whichever comes first.
 */
export function sandboxCookie(token: string, secure: boolean): string {
  return `${SANDBOX_COOKIE}=${token}; Path=/; HttpOnly; SameSite=Lax${secure ? "; Secure" : ""}`;
}

/** A cookie path holds no `;` (it would end the attribute) and nothing a header cannot carry. */
const COOKIE_PATH = /^\/[\x21-\x3a\x3c-\x7e]*$/;
/** A bound on the paths one answer expires; deeper paths are rare and only stay tossed. */
const MAX_CLEARED_PATHS = 8;

/**
 * Set-Cookie lines that expire `name` wherever a cookie sent with a request for `path` to `host`
 * could have been set. Paths: `/`, every ancestor of the path with and without its trailing
 * slash, and the path itself (RFC 6265 §5.1.4 path-match), plus `/dev`, where a tossed cookie
 * takes over the dev sandbox. Domains: host-only, and Domain= the host and each parent domain
 * (§5.1.3), where a sibling host may have tossed one; a browser ignores those it would not
 * accept (a public suffix). The request does not say which of these a cookie has, so all go.
 */
export function expiredCookies(name: string, path: string, host: string, secure: boolean): string[] {
  const paths = new Set(["/", "/dev"]);
  for (let i = path.indexOf("/", 1); i !== -1 && paths.size < MAX_CLEARED_PATHS; i = path.indexOf("/", i + 1)) {
    paths.add(path.slice(0, i));
    paths.add(path.slice(0, i + 1));
  }
  if (paths.size < MAX_CLEARED_PATHS) paths.add(path);
  // `localhost` is its own only domain; `hv.example.org` has itself and example.org, never `org`.
  // An IP address takes no Domain attribute at all (§5.1.3).
  const labels = host.split(".");
  const parents = /^[\d.]+$|:/.test(host) ? [] : labels.length === 1 ? [host] : labels.slice(0, -1).map((_, i) => labels.slice(i).join("."));
  const domains = ["", ...parents.map((d) => `; Domain=${d}`)];
  const attributes = `; Max-Age=0; HttpOnly; SameSite=Lax${secure ? "; Secure" : ""}`;
  return [...paths].filter((p) => COOKIE_PATH.test(p)).flatMap((p) => domains.map((d) => `${name}=; Path=${p}${d}${attributes}`));
}

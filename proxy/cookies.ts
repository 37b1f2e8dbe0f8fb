/** The session cookie of the public origin (DESIGN §5). */
export const SESSION_COOKIE = "hv_session";

/** A request carrying more hv_session cookies than this is not worth looking at further. */
const MAX_COOKIES_TRIED = 4;

/** The hv_session values in a Cookie header (RFC 6265 §5.4), in order. */
export function sessionTokens(cookieHeader: string | undefined): string[] {
  if (!cookieHeader) return [];
  const tokens: string[] = [];
  for (const part of cookieHeader.split(";")) {
    const eq = part.indexOf("=");
    if (eq < 0 || part.slice(0, eq).trim() !== SESSION_COOKIE) continue;
    let value = part.slice(eq + 1).trim();
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
    tokens.push(value);
    if (tokens.length >= MAX_COOKIES_TRIED) break;
  }
  return tokens;
}

/** Removes the session cookie and keeps the sandbox's own cookies. */
export function stripSessionCookie(cookie: string | undefined): string | undefined {
  if (!cookie) return undefined;
  const kept = cookie
    .split(";")
    .map((c) => c.trim())
    .filter((c) => c && !c.startsWith(`${SESSION_COOKIE}=`));
  return kept.length ? kept.join("; ") : undefined;
}

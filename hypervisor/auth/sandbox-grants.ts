import { randomBytes } from "node:crypto";
import { MAX_SESSION_COOKIES, parseCookies, sessionTokens } from "../../proxy/cookies.js";
import type { Session } from "../../proxy/auth-gate.js";
import type { SandboxGate, SandboxHost } from "../../proxy/sandbox-origins.js";
import type { Role } from "../../proxy/target.js";
import type { Db } from "../db/database.js";
import { hashToken, type SessionStore } from "./session-store.js";

/** A launch code only crosses one redirect: a minute is plenty, and a leaked one soon worthless. */
export const LAUNCH_CODE_TTL_MS = 60 * 1000;
/** Launch codes held at most, and grants kept in memory; beyond that the oldest codes go (their holders launch again). */
const MAX_ENTRIES = 10_000;
/**
 * Grants kept per session and role: a browser holds one hv_sandbox cookie per sandbox origin, so
 * older ones are dead weight, but two tabs launching at once may each still use theirs a moment.
 */
const GRANTS_PER_SESSION_ROLE = 4;
/** 32 random bytes (256 bits) as unpadded base64url, for codes and cookie values alike. */
const TOKEN = /^[A-Za-z0-9_-]{43}$/;

/** What one hv_sandbox cookie stands for: one user's one role, for as long as its session lives. */
interface Grant extends SandboxHost {
  /** The SHA-256 of the hv_session token it came from: the session is checked on every use. */
  sessionHash: string;
}

interface PendingLaunch {
  grant: Grant;
  next: string;
  expiresAt: number;
}

/**
 * hv_sandbox cookies for sandbox origins (DESIGN §4). A signed-in browser on the public origin
 * gets a one-time launch code for its own sandbox origin; the sandbox origin spends it for a
 * host-only cookie bound to that user, that role and that session. Each use asks the session
 * store about the session again, so logout, passkey removal, expiry and the operator's revoke
 * end the sandbox cookies with it. Launch codes live in memory (a minute each); grants are in
 * SQLite by the hash of their token, ending with their session's row, so a restart of the daemon
 * fails none of a page's requests or WebSocket reconnections (DESIGN §7a), with a cache in front.
 */
export class SandboxGrants implements SandboxGate {
  private readonly launches = new Map<string, PendingLaunch>();
  /** token hash → grant, the recently used ones; Map order is recency. */
  private readonly grants = new Map<string, Grant>();
  private readonly insertGrant;
  private readonly selectGrant;
  private readonly deleteGrant;
  private readonly trimGrants;

  constructor(
    private readonly sessions: SessionStore,
    db: Db,
    private readonly now: () => number = Date.now,
  ) {
    this.insertGrant = db.prepare<[string, string, string, string, number]>(
      "INSERT INTO sandbox_grants (token_hash, user, role, session_hash, created_at) VALUES (?, ?, ?, ?, ?)",
    );
    this.selectGrant = db.prepare<[string], { user: string; role: Role; session_hash: string }>(
      "SELECT user, role, session_hash FROM sandbox_grants WHERE token_hash = ?",
    );
    this.deleteGrant = db.prepare<[string]>("DELETE FROM sandbox_grants WHERE token_hash = ?");
    this.trimGrants = db.prepare<[string, string, string, string, number]>(
      `DELETE FROM sandbox_grants WHERE session_hash = ? AND role = ? AND token_hash NOT IN
         (SELECT token_hash FROM sandbox_grants WHERE session_hash = ? AND role = ? ORDER BY rowid DESC LIMIT ?)`,
    );
  }

  /**
   * A one-time code for the signed-in user's `role` sandbox origin, or undefined without a full
   * session. `next` must already be a safe same-origin path: the sandbox origin redirects to it.
   */
  issueLaunch(cookieHeader: string | undefined, role: Role, next: string): { user: string; code: string } | undefined {
    const session = this.sessions.authenticate(cookieHeader);
    if (session?.scope !== "full") return undefined;
    // The token that authenticated (authenticate() saw no second session), to bind the grant to.
    const token = sessionTokens(cookieHeader).find((t) => this.sessions.authenticateToken(t)?.sessionId === session.sessionId);
    if (!token) return undefined;
    const code = randomBytes(32).toString("base64url");
    const at = this.now();
    for (const [key, pending] of this.launches) {
      // Map order is issue order and every code lives as long, so the expired ones lead.
      if (pending.expiresAt > at && this.launches.size < MAX_ENTRIES) break;
      this.launches.delete(key);
    }
    this.launches.set(hashToken(code), { grant: { user: session.user, role, sessionHash: hashToken(token) }, next, expiresAt: at + LAUNCH_CODE_TTL_MS });
    return { user: session.user, code };
  }

  redeemLaunch(code: string, host: SandboxHost): { token: string; next: string } | undefined {
    if (!TOKEN.test(code)) return undefined;
    const key = hashToken(code);
    const pending = this.launches.get(key);
    if (!pending) return undefined;
    this.launches.delete(key);
    const { grant } = pending;
    if (pending.expiresAt <= this.now() || !sameHost(grant, host) || this.sessions.authenticateHash(grant.sessionHash)?.scope !== "full") return undefined;
    const token = randomBytes(32).toString("base64url");
    const grantKey = hashToken(token);
    try {
      this.insertGrant.run(grantKey, grant.user, grant.role, grant.sessionHash, this.now());
    } catch (err) {
      // The session's row went between the check and the insert (a sign-out): no grant.
      if ((err as { code?: string }).code === "SQLITE_CONSTRAINT_FOREIGNKEY") return undefined;
      throw err;
    }
    this.trimGrants.run(grant.sessionHash, grant.role, grant.sessionHash, grant.role, GRANTS_PER_SESSION_ROLE);
    this.remember(grantKey, grant);
    return { token, next: pending.next };
  }

  /**
   * Only a grant for exactly this host counts: an hv_sandbox tossed in by a sibling sandbox
   * (Domain=<sandbox domain>) names another user or role and is passed over, never followed.
   */
  authenticateSandbox(cookieHeader: string | undefined, host: SandboxHost): Session | undefined {
    const tokens = parseCookies(cookieHeader).sandboxes;
    if (tokens.length > MAX_SESSION_COOKIES) return undefined;
    for (const token of tokens) {
      if (!TOKEN.test(token)) continue;
      const key = hashToken(token);
      const grant = this.grant(key);
      if (!grant || !sameHost(grant, host)) continue;
      const session = this.sessions.authenticateHash(grant.sessionHash);
      if (session?.scope === "full") {
        this.remember(key, grant);
        return session;
      }
      // Its session is over: so is the grant.
      this.grants.delete(key);
      this.deleteGrant.run(key);
    }
    return undefined;
  }

  private grant(key: string): Grant | undefined {
    const cached = this.grants.get(key);
    if (cached) return cached;
    const row = this.selectGrant.get(key);
    return row && { user: row.user, role: row.role, sessionHash: row.session_hash };
  }

  /** Into the cache, as its most recently used entry; the bound evicts the least recently used. */
  private remember(key: string, grant: Grant): void {
    this.grants.delete(key);
    this.grants.set(key, grant);
    if (this.grants.size > MAX_ENTRIES) this.grants.delete(this.grants.keys().next().value!);
  }
}

function sameHost(a: SandboxHost, b: SandboxHost): boolean {
  return a.user === b.user && a.role === b.role;
}

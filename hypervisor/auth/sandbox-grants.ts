import { randomBytes } from "node:crypto";
import { MAX_SESSION_COOKIES, parseCookies, sessionTokens } from "../../proxy/cookies.js";
import type { Session } from "../../proxy/auth-gate.js";
import type { SandboxGate, SandboxHost } from "../../proxy/sandbox-origins.js";
import type { Role } from "../../proxy/target.js";
import { hashToken, type SessionStore } from "./session-store.js";

/** A launch code only crosses one redirect: a minute is plenty, and a leaked one soon worthless. */
export const LAUNCH_CODE_TTL_MS = 60 * 1000;
/** Launch codes and grants held at most; beyond that the oldest go, and their holders launch again. */
const MAX_ENTRIES = 10_000;
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
 * end the sandbox cookies with it. In memory, keyed by hashes: after a restart a browser simply
 * launches again, which its next page load does by itself.
 */
export class SandboxGrants implements SandboxGate {
  private readonly launches = new Map<string, PendingLaunch>();
  private readonly grants = new Map<string, Grant>();

  constructor(
    private readonly sessions: SessionStore,
    private readonly now: () => number = Date.now,
  ) {}

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
    this.grants.set(hashToken(token), grant);
    if (this.grants.size > MAX_ENTRIES) this.grants.delete(this.grants.keys().next().value!);
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
      const grant = this.grants.get(key);
      if (!grant || !sameHost(grant, host)) continue;
      const session = this.sessions.authenticateHash(grant.sessionHash);
      if (session?.scope === "full") {
        // Re-inserted: Map order is recency, so the bound evicts the least recently used.
        this.grants.delete(key);
        this.grants.set(key, grant);
        return session;
      }
      // Its session is over: so is the grant.
      this.grants.delete(key);
    }
    return undefined;
  }
}

function sameHost(a: SandboxHost, b: SandboxHost): boolean {
  return a.user === b.user && a.role === b.role;
}

import { createHash, randomBytes } from "node:crypto";
import { MAX_SESSION_COOKIES, SESSION_COOKIE, sessionTokens } from "../../proxy/cookies.js";
import type { Session, SessionCredentials } from "../../proxy/auth-gate.js";
import type { Db } from "../db/database.js";
import { HypervisorError } from "../errors.js";

/** "recovery" may only enrol a new passkey; everything else must treat it as signed out. */
type SessionScope = Session["scope"];

/** The store's name for the session the proxy's auth gate knows. */
export type SessionInfo = Session;

export interface NewSession {
  /** The cookie value. Shown to the browser once; only its SHA-256 is stored. */
  token: string;
  session: SessionInfo;
  /** When the session ends at the latest (epoch ms): the cookie's lifetime. */
  expiresAt: number;
}

export interface SessionLimits {
  idleMs: number;
  absoluteMs: number;
}

/**
 * Full sessions: an abandoned browser signs out after half a day without a request (idle), and
 * even a busy one re-proves possession of a passkey once a week (absolute), which bounds what a
 * stolen cookie is worth without asking users to sign in every morning.
 */
export const FULL_SESSION: SessionLimits = { idleMs: 12 * 60 * 60 * 1000, absoluteMs: 7 * 24 * 60 * 60 * 1000 };
/** A recovery session exists only to enrol a new passkey right away: minutes, not days. */
export const RECOVERY_SESSION: SessionLimits = { idleMs: 15 * 60 * 1000, absoluteMs: 15 * 60 * 1000 };
/**
 * "Last seen" is written at most this often per session, so the proxy's hot path does not
 * write to SQLite per request; idle expiry is therefore exact to within this interval.
 */
export const LAST_SEEN_WRITE_MS = 60 * 1000;
/** Sessions held in memory; beyond this the least recently used is dropped (and re-read on use). */
export const DEFAULT_CACHE_SIZE = 10_000;
/** Ended sessions whose reason is remembered (whyEnded): a user's few browsers, for many users. */
const MAX_END_REASONS = 10_000;
/** Why a session ended, when its holder is told on the sign-in page: its user was disabled. */
export type EndReason = "disabled";
/** 32 random bytes (256 bits) as unpadded base64url. */
const TOKEN = /^[A-Za-z0-9_-]{43}$/;

interface Entry {
  sessionId: string;
  user: string;
  scope: SessionScope;
  expiresAt: number;
  lastSeen: number;
  lastSeenWritten: number;
}

interface Row {
  id: string;
  user: string;
  scope: SessionScope;
  last_seen_at: number;
  expires_at: number;
}

export function hashToken(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/**
 * The Set-Cookie value for a session (RFC 6265 §4.1): HttpOnly so page scripts cannot read it,
 * SameSite=Lax so other sites cannot make the browser send it with their POSTs, Secure when
 * the public origin is https. Max-Age is the absolute lifetime; idle expiry is the server's job.
 */
export function sessionCookie(token: string, opts: { secure: boolean; maxAgeSeconds: number }): string {
  return `${SESSION_COOKIE}=${token}; Path=/; Max-Age=${Math.max(0, Math.floor(opts.maxAgeSeconds))}; HttpOnly; SameSite=Lax${opts.secure ? "; Secure" : ""}`;
}

export function clearedSessionCookie(opts: { secure: boolean }): string {
  return sessionCookie("", { ...opts, maxAgeSeconds: 0 });
}

/**
 * Sessions, stored hashed in SQLite and served from a bounded in-memory cache. This process is
 * the only writer of the sessions table, so every revocation removes the cache entry at the
 * same moment it deletes the row: `authenticate()` never answers from a stale entry.
 *
 * Whatever ends a session (logout, passkey removal, expiry, any revocation) is told to the
 * `onEnded` listeners, so what a session opened, such as a WebSocket, ends with it.
 */
export class SessionStore {
  /** token hash → entry; Map order is recency order (least recent first). */
  private readonly cache = new Map<string, Entry>();
  private readonly endedListeners: ((sessionId: string) => void)[] = [];
  /** token hash → why its session was ended (whyEnded); oldest first. */
  private readonly endReasons = new Map<string, EndReason>();
  private readonly now: () => number;
  private readonly cacheSize: number;
  // Prepared once: the lookup and the last-seen write sit on the proxy's path.
  private readonly selectByHash;
  private readonly updateLastSeen;
  private readonly deleteById;

  constructor(
    private readonly db: Db,
    opts: { now?: () => number; cacheSize?: number } = {},
  ) {
    this.now = opts.now ?? Date.now;
    this.cacheSize = opts.cacheSize ?? DEFAULT_CACHE_SIZE;
    this.selectByHash = db.prepare<[string], Row>("SELECT id, user, scope, last_seen_at, expires_at FROM sessions WHERE token_hash = ?");
    this.updateLastSeen = db.prepare<[number, string]>("UPDATE sessions SET last_seen_at = ? WHERE id = ?");
    this.deleteById = db.prepare<[string]>("DELETE FROM sessions WHERE id = ?");
  }

  /** Refuses a user the operator disabled (DESIGN §6); every sign-in ends in create(), which asks this. */
  refuseDisabled(user: string): void {
    const row = this.db.prepare("SELECT disabled_at FROM users WHERE name = ?").get(user) as { disabled_at: number | null } | undefined;
    if (row?.disabled_at != null) throw new HypervisorError("forbidden", "this account is disabled: ask the operator to enable it", { user });
  }

  create(user: string, scope: SessionScope): NewSession {
    this.refuseDisabled(user);
    const at = this.now();
    const limits = scope === "full" ? FULL_SESSION : RECOVERY_SESSION;
    const token = randomBytes(32).toString("base64url");
    const sessionId = randomBytes(12).toString("base64url");
    const expiresAt = at + limits.absoluteMs;
    this.purgeExpired(at);
    this.db
      .prepare("INSERT INTO sessions (id, token_hash, user, scope, created_at, last_seen_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
      .run(sessionId, hashToken(token), user, scope, at, at, expiresAt);
    this.remember(hashToken(token), { sessionId, user, scope, expiresAt, lastSeen: at, lastSeenWritten: at });
    return { token, session: { user, sessionId, scope }, expiresAt };
  }

  /**
   * The session a Cookie header carries, if it is valid and unexpired; refreshes its idle timer.
   * Synchronous and, for a cached session, free of SQLite except the once-a-minute "last seen".
   * A stale cookie beside a valid one is harmless, but two different valid sessions mean a
   * cookie was tossed in from elsewhere (a sibling host, or a sandbox page at another path), and
   * no order of the two tells which is the owner's: that request is signed out (DESIGN §5).
   */
  authenticate(cookieHeader: string | undefined): SessionInfo | undefined {
    return this.authenticateCredentials(this.credentials(cookieHeader));
  }

  /**
   * A Cookie header's hv_session tokens, hashed once (SHA-256 is most of a cached lookup's cost):
   * the well-formed ones, in order; past MAX_SESSION_COOKIES none at all.
   */
  credentials(cookieHeader: string | undefined): SessionCredentials {
    const tokens = sessionTokens(cookieHeader);
    const keys = tokens.length > MAX_SESSION_COOKIES ? undefined : tokens.filter((t) => TOKEN.test(t)).map(hashToken);
    return { presented: tokens.length, keys };
  }

  /** authenticate(), for credentials prepared from the header: the same checks, every call. */
  authenticateCredentials({ keys }: SessionCredentials): SessionInfo | undefined {
    if (!keys) return undefined;
    let found: SessionInfo | undefined;
    for (const hash of keys) {
      const session = this.authenticateHash(hash);
      if (!session) continue;
      if (found && found.sessionId !== session.sessionId) return undefined;
      found = session;
    }
    return found;
  }

  authenticateToken(token: string): SessionInfo | undefined {
    return TOKEN.test(token) ? this.authenticateHash(hashToken(token)) : undefined;
  }

  /** As authenticateToken, for a holder that keeps only the token's hash: a sandbox origin's grant. */
  authenticateHash(hash: string): SessionInfo | undefined {
    const at = this.now();
    let entry = this.cache.get(hash);
    if (entry) {
      // Re-insert to mark it most recently used.
      this.cache.delete(hash);
      this.cache.set(hash, entry);
    } else {
      const row = this.selectByHash.get(hash);
      if (!row) return undefined;
      entry = {
        sessionId: row.id,
        user: row.user,
        scope: row.scope,
        expiresAt: row.expires_at,
        lastSeen: row.last_seen_at,
        lastSeenWritten: row.last_seen_at,
      };
      this.remember(hash, entry);
    }
    if (this.expired(entry, at)) {
      this.drop(hash, entry);
      return undefined;
    }
    entry.lastSeen = at;
    if (at - entry.lastSeenWritten >= LAST_SEEN_WRITE_MS) this.writeLastSeen(entry);
    return { user: entry.user, sessionId: entry.sessionId, scope: entry.scope };
  }

  /** Called with the id of every session that ends, once, after its row and cache entry are gone. */
  onEnded(listener: (sessionId: string) => void): void {
    this.endedListeners.push(listener);
  }

  /** Ends one session (logout). */
  revoke(sessionId: string): void {
    const { changes } = this.deleteById.run(sessionId);
    this.forget((e) => e.sessionId === sessionId);
    if (changes > 0) this.ended([sessionId]);
  }

  /**
   * Ends every session of `user` except `except` (after a passkey was removed); returns how many.
   * `because`: a reason the sign-in page tells whoever comes back with one of these cookies.
   */
  revokeUser(user: string, opts: { except?: string; because?: EndReason } = {}): number {
    const rows = this.db.prepare("DELETE FROM sessions WHERE user = ? AND id != ? RETURNING id, token_hash").all(user, opts.except ?? "") as {
      id: string;
      token_hash: string;
    }[];
    this.forget((e) => e.user === user && e.sessionId !== opts.except);
    if (opts.because) for (const r of rows) this.rememberEndReason(r.token_hash, opts.because);
    this.ended(rows.map((r) => r.id));
    return rows.length;
  }

  /**
   * Why the session a Cookie header carries was ended, when it was for a reason its holder should
   * be told (its user was disabled). Kept in memory only, for the last MAX_END_REASONS such
   * sessions: after a restart the sign-in page just asks to sign in, and the sign-in says why not.
   */
  whyEnded(cookieHeader: string | undefined): EndReason | undefined {
    for (const hash of this.credentials(cookieHeader).keys ?? []) {
      const why = this.endReasons.get(hash);
      if (why) return why;
    }
    return undefined;
  }

  /**
   * Ends the sessions that expired since anyone asked: `authenticate()` notices expiry only when
   * a session is used, and an open WebSocket does not use it. Cheap enough to run every few
   * seconds: one pass over the bounded cache and one DELETE.
   */
  sweep(): void {
    const at = this.now();
    const expired: string[] = [];
    for (const [hash, entry] of this.cache) {
      if (!this.expired(entry, at)) continue;
      this.cache.delete(hash);
      this.deleteById.run(entry.sessionId);
      expired.push(entry.sessionId);
    }
    this.ended(expired);
    this.purgeExpired(at);
  }

  /** Sessions of a user that are still valid, for counting and tests. */
  count(user: string): number {
    const at = this.now();
    const rows = this.db.prepare("SELECT scope, last_seen_at, expires_at FROM sessions WHERE user = ?").all(user) as Row[];
    return rows.filter((r) => !this.expired({ scope: r.scope, expiresAt: r.expires_at, lastSeen: r.last_seen_at }, at)).length;
  }

  private expired(e: Pick<Entry, "scope" | "expiresAt" | "lastSeen">, at: number): boolean {
    const limits = e.scope === "full" ? FULL_SESSION : RECOVERY_SESSION;
    return at >= e.expiresAt || at - e.lastSeen >= limits.idleMs;
  }

  private writeLastSeen(entry: Entry): void {
    const { changes } = this.updateLastSeen.run(entry.lastSeen, entry.sessionId);
    entry.lastSeenWritten = entry.lastSeen;
    // The row is gone only if it was purged as expired: then so is the entry.
    if (changes === 0) this.forget((e) => e.sessionId === entry.sessionId);
  }

  private remember(hash: string, entry: Entry): void {
    this.cache.set(hash, entry);
    while (this.cache.size > this.cacheSize) {
      const [oldestHash, oldest] = this.cache.entries().next().value as [string, Entry];
      this.cache.delete(oldestHash);
      // Keep its idle timer honest for when it is read back from SQLite.
      if (oldest.lastSeen > oldest.lastSeenWritten) this.writeLastSeen(oldest);
    }
  }

  private rememberEndReason(hash: string, why: EndReason): void {
    this.endReasons.set(hash, why);
    if (this.endReasons.size > MAX_END_REASONS) this.endReasons.delete(this.endReasons.keys().next().value!);
  }

  private drop(hash: string, entry: Entry): void {
    this.cache.delete(hash);
    const { changes } = this.deleteById.run(entry.sessionId);
    if (changes > 0) this.ended([entry.sessionId]);
  }

  /** A linear scan: revocations are rare and the cache is bounded, so an index would only add state. */
  private forget(match: (e: Entry) => boolean): void {
    for (const [hash, entry] of this.cache) if (match(entry)) this.cache.delete(hash);
  }

  private ended(sessionIds: string[]): void {
    for (const id of sessionIds) for (const listener of this.endedListeners) listener(id);
  }

  /**
   * Deletes rows that are expired by any measure, and their cache entries. The idle test leaves
   * a margin of two write intervals, since a row's last_seen_at may trail the cache by up to one.
   */
  private purgeExpired(at: number): void {
    const rows = this.db
      .prepare(
        `DELETE FROM sessions WHERE expires_at <= ?
           OR (scope = 'full' AND last_seen_at <= ?)
           OR (scope = 'recovery' AND last_seen_at <= ?)
         RETURNING id`,
      )
      .all(at, at - FULL_SESSION.idleMs - 2 * LAST_SEEN_WRITE_MS, at - RECOVERY_SESSION.idleMs - 2 * LAST_SEEN_WRITE_MS) as { id: string }[];
    if (rows.length === 0) return;
    const ids = new Set(rows.map((r) => r.id));
    this.forget((e) => ids.has(e.sessionId));
    this.ended([...ids]);
  }
}

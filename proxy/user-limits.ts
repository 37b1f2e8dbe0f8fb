import { HypervisorError } from "../hypervisor/errors.js";

/** What one user may hold of the proxy at once: each a count of things in flight. */
export type Limit = "requests" | "websockets";

/** How long a refused client is asked to wait (RFC 9110 §10.2.3): in-flight requests end quickly, or are the client's own. */
const RETRY_AFTER_SECONDS = 1;

/**
 * Per-user bounds on what the proxy holds for a user at once: proxied requests in flight and
 * WebSockets open or opening (HYPERVISOR_USER_MAX_REQUESTS, HYPERVISOR_USER_MAX_WEBSOCKETS). One
 * user's flood then costs that user refusals, never another user's requests their sockets,
 * descriptors or the daemon's memory. Counts live only while something is held: the map holds
 * the users with something in flight.
 */
export class UserLimits {
  private readonly held = { requests: new Map<string, number>(), websockets: new Map<string, number>() };

  constructor(private readonly max: Record<Limit, number>) {}

  /** Takes one of `user`'s `limit`: the release to call exactly once when it ends, or undefined when the user has none left. */
  acquire(user: string, limit: Limit): (() => void) | undefined {
    const counts = this.held[limit];
    const n = counts.get(user) ?? 0;
    if (n >= this.max[limit]) return undefined;
    counts.set(user, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = counts.get(user)! - 1;
      if (left === 0) counts.delete(user);
      else counts.set(user, left);
    };
  }

  /** The refusal a client gets past its bound: 429 (RFC 6585 §4) with Retry-After. */
  refusal(limit: Limit): HypervisorError {
    const what = limit === "requests" ? `${this.max.requests} requests in flight` : `${this.max.websockets} WebSockets open`;
    return new HypervisorError("rate_limited", `too many at once: this user already has ${what}; try again shortly`, {
      retryAfterSeconds: RETRY_AFTER_SECONDS,
      limit,
    });
  }
}

/** A signed-in browser, as the control plane's session store vouches for it. */
export interface Session {
  user: string;
  /** Which sign-in this is: what the proxy binds a WebSocket to, so revoking it closes them. */
  sessionId: string;
  scope: "full" | "recovery";
}

/**
 * A Cookie header's session tokens as the session check looks them up, prepared once. The data
 * plane only keeps them, per connection while the header stays the same: a browser sends the
 * same Cookie header on every request of a keep-alive connection.
 */
export interface SessionCredentials {
  /** How many hv_session cookies the header carried, well-formed or not. */
  readonly presented: number;
  /** What the control plane keys sessions by (the tokens' hashes), in header order; undefined when the header can hold no session. */
  readonly keys: readonly string[] | undefined;
}

/** The session check the data plane needs: synchronous and cached, called on every request. */
export interface AuthGate {
  /** What authenticateCredentials() needs of a Cookie header: the part that depends on the header alone. */
  credentials(cookieHeader: string | undefined): SessionCredentials;
  /**
   * The session the header the credentials came from carries, if valid: each call checks the
   * session itself again (expiry, revocation), so keeping credentials never keeps a session alive.
   */
  authenticateCredentials(credentials: SessionCredentials): Session | undefined;
}

/** A recovery session may only enrol a passkey: to the data plane it is no session at all. */
export function fullSession(gate: AuthGate, credentials: SessionCredentials): Session | undefined {
  const session = gate.authenticateCredentials(credentials);
  return session?.scope === "full" ? session : undefined;
}

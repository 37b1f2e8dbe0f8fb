/** A signed-in browser, as the control plane's session store vouches for it. */
export interface Session {
  user: string;
  /** Which sign-in this is: what the proxy binds a WebSocket to, so revoking it closes them. */
  sessionId: string;
  scope: "full" | "recovery";
}

/** The session check the data plane needs: synchronous and cached, called on every request. */
export interface AuthGate {
  authenticate(cookieHeader: string | undefined): Session | undefined;
}

/** A recovery session may only enrol a passkey: to the data plane it is no session at all. */
export function fullSession(gate: AuthGate, cookieHeader: string | undefined): Session | undefined {
  const session = gate.authenticate(cookieHeader);
  return session?.scope === "full" ? session : undefined;
}

export function signedInUser(gate: AuthGate, cookieHeader: string | undefined): string | undefined {
  return fullSession(gate, cookieHeader)?.user;
}

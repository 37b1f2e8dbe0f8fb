/**
 * The data plane's own vocabulary. The control plane imports these names; the proxy never
 * imports the control plane's (kamal-proxy's target.go plays the same part).
 */

/** One of a user's two sandbox places; a slot keeps its data across swaps. */
export type Slot = "a" | "b";
/** What a slot is to its user right now; a swap exchanges the roles of the two slots. */
export type Role = "live" | "dev";
export const ROLES: readonly Role[] = ["live", "dev"];

/** Where a sandbox listens. */
export interface Endpoint {
  host: string;
  port: number;
}

/** A sandbox the proxy may send traffic to: running and seen healthy. */
export interface Target {
  user: string;
  slot: Slot;
  endpoint: Endpoint;
  generationId: number;
}

/** What the proxy asks of whoever runs sandboxes: a target for (user, role), started on demand. */
export interface TargetSource {
  /** Resolves to a running, healthy target; also marks it active, so idle stop leaves it. */
  ensure(user: string, role: Role): Promise<Target>;
  /** The target for (user, role) if it is running and healthy now, marked active as ensure() does; undefined: ask ensure(). */
  current(user: string, role: Role): Target | undefined;
  /** An open WebSocket, or an HTTP request in flight, keeps its target active (never idle) until the returned release is called. */
  socketOpened(target: Target): () => void;
  /** Forget a target the proxy found unreachable, so the next request looks again. */
  invalidate(target: Target): void;
}

/** The route table as the proxy reads it: which slot a role is, and when that changes. */
export interface RouteSource {
  slotOf(user: string, role: Role): Slot;
  onRouteChange(listener: (user: string) => void): void;
  /**
   * The slot's sandbox is about to be replaced in place (a promote: another generation on the same
   * slot and data); its WebSockets close with 1012 so clients reconnect to the new one.
   */
  onSlotReplaced?(listener: (user: string, slot: Slot) => void): void;
}

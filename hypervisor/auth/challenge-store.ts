/**
 * Which ceremony a challenge was issued for, and what it is bound to. A challenge answered in
 * another ceremony, by another session, or for another user name is refused.
 */
export type Ceremony =
  | { kind: "register"; username: string; handle: string; inviteId: number | undefined }
  | { kind: "login"; username: string | undefined }
  | { kind: "add-passkey"; user: string; sessionId: string; handle: string }
  /** Step-up lives shorter than the store keeps challenges: `notAfter` is its own deadline. */
  | { kind: "step-up"; user: string; sessionId: string; action: StepUpAction; notAfter: number };

/** The changes that need a fresh passkey assertion made for them (DESIGN §5 step-up). */
export const STEP_UP_ACTIONS = ["passkey.add", "passkey.remove", "recovery-codes.regenerate"] as const;
export type StepUpAction = (typeof STEP_UP_ACTIONS)[number];

interface Pending {
  ceremony: Ceremony;
  expiresAt: number;
}

/** WebAuthn ceremonies time out with the options' timeout; the challenge dies with them. */
export const CHALLENGE_TTL_MS = 5 * 60 * 1000;
/** Outstanding challenges at most: a flood of option requests cannot grow memory without bound. */
const MAX_PENDING = 10_000;

/**
 * Outstanding WebAuthn challenges (WebAuthn L3 §13.4.3: random, single use, server-side).
 * In memory: a challenge outlives neither its five minutes nor the process, and a restart
 * only means the user presses the button again.
 */
export class ChallengeStore {
  private readonly pending = new Map<string, Pending>();

  constructor(private readonly now: () => number = Date.now) {}

  issue(challenge: string, ceremony: Ceremony): void {
    const at = this.now();
    for (const [key, p] of this.pending) {
      // Map order is issue order, so the expired ones are at the front.
      if (p.expiresAt > at && this.pending.size < MAX_PENDING) break;
      this.pending.delete(key);
    }
    this.pending.set(challenge, { ceremony, expiresAt: at + CHALLENGE_TTL_MS });
  }

  /** Removes the challenge and returns its ceremony if it was outstanding, unexpired and of `kind`. */
  take<K extends Ceremony["kind"]>(challenge: string, kind: K): Extract<Ceremony, { kind: K }> | undefined {
    const p = this.pending.get(challenge);
    if (!p) return undefined;
    this.pending.delete(challenge);
    if (p.expiresAt <= this.now() || p.ceremony.kind !== kind) return undefined;
    return p.ceremony as Extract<Ceremony, { kind: K }>;
  }
}

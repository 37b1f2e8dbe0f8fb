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
export const STEP_UP_ACTIONS = [
  "passkey.add",
  "passkey.remove",
  "recovery-codes.regenerate",
  // A user's own keys for egress routes (DESIGN §5b).
  "egress-key.set",
  "egress-key.remove",
  // A user's own data (DESIGN §2a): each replaces what a sandbox runs on.
  "data.promote",
  "data.rollback",
  "data.fork",
  "snapshot.restore",
  "snapshot.delete",
] as const;
export type StepUpAction = (typeof STEP_UP_ACTIONS)[number];

interface Pending {
  ceremony: Ceremony;
  expiresAt: number;
  /** The rate-limit key of the client it was issued to. */
  client: string;
}

/** WebAuthn ceremonies time out with the options' timeout; the challenge dies with them. */
export const CHALLENGE_TTL_MS = 5 * 60 * 1000;

export interface ChallengeLimits {
  /** Outstanding challenges at most: a flood of option requests cannot grow memory without bound. */
  total: number;
  /** Outstanding challenges of one client at most: a person runs a ceremony or two at a time. */
  perClient: number;
}

/** About 200 bytes each: tens of MB at worst, and far more than the per-address limits fill in five minutes from few addresses. */
export const DEFAULT_CHALLENGE_LIMITS: ChallengeLimits = { total: 100_000, perClient: 16 };

/**
 * Outstanding WebAuthn challenges (WebAuthn L3 §13.4.3: random, single use, server-side).
 * In memory: a challenge outlives neither its five minutes nor the process, and a restart
 * only means the user presses the button again.
 *
 * Eviction never lets one client push out another's challenge while it has any of its own: a
 * client past `perClient` loses its own oldest, and when the store is full the client holding
 * the most loses its oldest. So a flood from a few addresses evicts only itself, and pushing a
 * victim's single challenge out takes `total` addresses' worth of challenges within five
 * minutes. (Stateless, signed challenges would avoid the store, but single use would still need
 * a record of used ones, with the same bound to keep.)
 */
export class ChallengeStore {
  /** Issue order, so the expired ones are at the front. */
  private readonly pending = new Map<string, Pending>();
  /** Each client's outstanding challenges, oldest first. */
  private readonly byClient = new Map<string, string[]>();
  /** Clients by how many challenges they hold (the index), to find the heaviest without a scan. */
  private readonly holding: Set<string>[];

  constructor(
    private readonly now: () => number = Date.now,
    private readonly limits: ChallengeLimits = DEFAULT_CHALLENGE_LIMITS,
  ) {
    this.holding = Array.from({ length: limits.perClient + 1 }, () => new Set<string>());
  }

  get size(): number {
    return this.pending.size;
  }

  issue(challenge: string, ceremony: Ceremony, client: string): void {
    const at = this.now();
    for (const [key, p] of this.pending) {
      if (p.expiresAt > at) break;
      this.remove(key, p);
    }
    const mine = this.byClient.get(client);
    if (mine && mine.length >= this.limits.perClient) this.remove(mine[0]!, this.pending.get(mine[0]!)!);
    if (this.pending.size >= this.limits.total) this.evictFromHeaviest();
    this.pending.set(challenge, { ceremony, expiresAt: at + CHALLENGE_TTL_MS, client });
    const list = this.byClient.get(client) ?? [];
    list.push(challenge);
    this.byClient.set(client, list);
    this.recount(client, list.length - 1, list.length);
  }

  /** Removes the challenge and returns its ceremony if it was outstanding, unexpired and of `kind`. */
  take<K extends Ceremony["kind"]>(challenge: string, kind: K): Extract<Ceremony, { kind: K }> | undefined {
    const p = this.pending.get(challenge);
    if (!p) return undefined;
    this.remove(challenge, p);
    if (p.expiresAt <= this.now() || p.ceremony.kind !== kind) return undefined;
    return p.ceremony as Extract<Ceremony, { kind: K }>;
  }

  private evictFromHeaviest(): void {
    for (let n = this.limits.perClient; n > 0; n--) {
      const client = this.holding[n]!.values().next().value as string | undefined;
      if (client === undefined) continue;
      const oldest = this.byClient.get(client)![0]!;
      this.remove(oldest, this.pending.get(oldest)!);
      return;
    }
  }

  private remove(challenge: string, p: Pending): void {
    this.pending.delete(challenge);
    const list = this.byClient.get(p.client)!;
    list.splice(list.indexOf(challenge), 1);
    if (list.length === 0) this.byClient.delete(p.client);
    this.recount(p.client, list.length + 1, list.length);
  }

  private recount(client: string, from: number, to: number): void {
    if (from > 0) this.holding[from]!.delete(client);
    if (to > 0) this.holding[to]!.add(client);
  }
}

export interface RateLimitPolicy {
  /** Requests allowed in a burst. */
  capacity: number;
  /** Tokens regained per minute (continuously, not in steps). */
  perMinute: number;
}

export type RateDecision = { ok: true } | { ok: false; retryAfterSeconds: number };

interface Bucket {
  tokens: number;
  at: number;
}

/** Keys tracked at most; beyond this the least recently touched bucket is forgotten. */
const MAX_KEYS = 50_000;

/**
 * Token buckets keyed by a string (client address, user name). In memory: a restart forgives
 * everyone, which is fine for limits that only slow guessing down.
 */
export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();

  constructor(
    readonly policy: RateLimitPolicy,
    private readonly now: () => number = Date.now,
    private readonly maxKeys = MAX_KEYS,
  ) {}

  /** Takes one token for `key` if there is one. */
  take(key: string): RateDecision {
    const bucket = this.refill(key);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return { ok: true };
    }
    return { ok: false, retryAfterSeconds: this.retryAfter(bucket) };
  }

  /** Whether `key` has a token left, without taking it (for limits counted on failure only). */
  check(key: string): RateDecision {
    const bucket = this.refill(key);
    return bucket.tokens >= 1 ? { ok: true } : { ok: false, retryAfterSeconds: this.retryAfter(bucket) };
  }

  private retryAfter(bucket: Bucket): number {
    return Math.max(1, Math.ceil(((1 - bucket.tokens) * 60_000) / this.policy.perMinute / 1000));
  }

  private refill(key: string): Bucket {
    const at = this.now();
    let bucket = this.buckets.get(key);
    if (bucket) {
      bucket.tokens = Math.min(this.policy.capacity, bucket.tokens + ((at - bucket.at) * this.policy.perMinute) / 60_000);
      bucket.at = at;
      this.buckets.delete(key);
    } else {
      bucket = { tokens: this.policy.capacity, at };
    }
    this.buckets.set(key, bucket);
    if (this.buckets.size > this.maxKeys) this.buckets.delete(this.buckets.keys().next().value as string);
    return bucket;
  }
}

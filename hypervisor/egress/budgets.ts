/**
 * Per-user egress budgets (DESIGN §5b), keyed by user and a target: a route (`route:openai`)
 * or the forward proxy (`proxy`, or `proxy:<host>`), whichever the caller counts under.
 * Requests per minute (a fixed window: the next minute allows again), concurrent requests, and a
 * daily budget of requests and bytes (UTC days). Held in memory: a restart starts the day's
 * counts afresh.
 */
export interface BudgetLimits {
  rpm?: number | undefined;
  concurrent?: number | undefined;
  dailyRequests?: number | undefined;
  dailyBytes?: number | undefined;
}

export type BudgetRefusal = {
  ok: false;
  code: "rate_limited";
  /** Which limit: what the sandbox's code reads to decide how to back off. */
  limit: "rpm" | "concurrent" | "daily_requests" | "daily_bytes";
  message: string;
  /** Whole seconds until the limit allows again (Retry-After). */
  retryAfterSeconds: number;
};

/**
 * A request admitted: count its bytes as they pass, release it once, when it ends. The daily
 * byte budget binds the request while it runs, not only at admission: once the user's day is
 * spent (by this request or another of theirs), `addBytes` answers with the refusal and the
 * caller ends the request.
 */
export interface BudgetLease {
  /** Counts `n` bytes (0 only asks); the refusal once the day's bytes are spent. */
  addBytes(n: number): BudgetRefusal | undefined;
  /** Bytes this request counted so far. */
  readonly bytes: number;
  release(): void;
}

export interface BudgetUsage {
  user: string;
  target: string;
  /** Requests in the current minute. */
  minuteRequests: number;
  concurrent: number;
  dayRequests: number;
  dayBytes: number;
  /** The UTC day the day counts are for, YYYY-MM-DD. */
  day: string;
}

const MINUTE = 60_000;
const DAY = 86_400_000;
/** Pairs of user and target kept at most; idle ones from earlier days go first. */
const MAX_ENTRIES = 100_000;

interface Entry {
  minute: number;
  minuteRequests: number;
  concurrent: number;
  day: number;
  dayRequests: number;
  dayBytes: number;
}

export class Budgets {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly now: () => number = Date.now) {}

  acquire(user: string, target: string, limits: BudgetLimits): { ok: true; lease: BudgetLease } | BudgetRefusal {
    const at = this.now();
    const entry = this.entryOf(user, target, at);
    const untilTomorrow = secondsUntil((entry.day + 1) * DAY - at);
    if (limits.dailyRequests !== undefined && entry.dayRequests >= limits.dailyRequests)
      return refuse("daily_requests", `the daily budget of ${limits.dailyRequests} requests to ${target} is spent`, untilTomorrow);
    if (limits.dailyBytes !== undefined && entry.dayBytes >= limits.dailyBytes) return bytesSpent(limits.dailyBytes, target, untilTomorrow);
    if (limits.rpm !== undefined && entry.minuteRequests >= limits.rpm)
      return refuse("rpm", `more than ${limits.rpm} requests a minute to ${target}`, secondsUntil((entry.minute + 1) * MINUTE - at));
    if (limits.concurrent !== undefined && entry.concurrent >= limits.concurrent)
      return refuse("concurrent", `more than ${limits.concurrent} requests at once to ${target}`, 1);
    entry.minuteRequests += 1;
    entry.dayRequests += 1;
    entry.concurrent += 1;
    let released = false;
    let bytes = 0;
    return {
      ok: true,
      lease: {
        // Bytes count towards the day they pass in: a call running past midnight spends the new day's.
        addBytes: (n) => {
          const now = this.now();
          this.roll(entry, now);
          entry.dayBytes += n;
          bytes += n;
          if (limits.dailyBytes === undefined || entry.dayBytes < limits.dailyBytes) return undefined;
          return bytesSpent(limits.dailyBytes, target, secondsUntil((entry.day + 1) * DAY - now));
        },
        get bytes() {
          return bytes;
        },
        release: () => {
          if (released) return;
          released = true;
          entry.concurrent -= 1;
        },
      },
    };
  }

  /** Counts of the current minute and day; one user's when `user` is given. */
  usage(user?: string): BudgetUsage[] {
    const at = this.now();
    const out: BudgetUsage[] = [];
    for (const [key, e] of this.entries) {
      const [u, target] = splitKey(key);
      if (user !== undefined && u !== user) continue;
      this.roll(e, at);
      out.push({
        user: u,
        target,
        minuteRequests: e.minuteRequests,
        concurrent: e.concurrent,
        dayRequests: e.dayRequests,
        dayBytes: e.dayBytes,
        day: new Date(e.day * DAY).toISOString().slice(0, 10),
      });
    }
    return out.sort((a, b) => a.user.localeCompare(b.user) || a.target.localeCompare(b.target));
  }

  /** Forgets a user's counts (the user was removed). */
  forget(user: string): void {
    for (const key of [...this.entries.keys()]) if (splitKey(key)[0] === user) this.entries.delete(key);
  }

  private entryOf(user: string, target: string, at: number): Entry {
    const key = `${user}\n${target}`;
    let entry = this.entries.get(key);
    if (!entry) {
      if (this.entries.size >= MAX_ENTRIES) this.prune(at);
      entry = { minute: Math.floor(at / MINUTE), minuteRequests: 0, concurrent: 0, day: Math.floor(at / DAY), dayRequests: 0, dayBytes: 0 };
      this.entries.set(key, entry);
    }
    this.roll(entry, at);
    return entry;
  }

  private roll(entry: Entry, at: number): void {
    const minute = Math.floor(at / MINUTE);
    if (minute !== entry.minute) {
      entry.minute = minute;
      entry.minuteRequests = 0;
    }
    const day = Math.floor(at / DAY);
    if (day !== entry.day) {
      entry.day = day;
      entry.dayRequests = 0;
      entry.dayBytes = 0;
    }
  }

  /** Drops entries with nothing in flight and nothing counted today: they hold no budget. */
  private prune(at: number): void {
    const today = Math.floor(at / DAY);
    for (const [key, e] of this.entries) if (e.concurrent === 0 && e.day !== today) this.entries.delete(key);
  }
}

function secondsUntil(ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000));
}

function bytesSpent(dailyBytes: number, target: string, retryAfterSeconds: number): BudgetRefusal {
  return refuse("daily_bytes", `the daily budget of ${dailyBytes} bytes to and from ${target} is spent`, retryAfterSeconds);
}

function refuse(limit: BudgetRefusal["limit"], message: string, retryAfterSeconds: number): BudgetRefusal {
  return { ok: false, code: "rate_limited", limit, message: `${message}; try again in ${retryAfterSeconds} s`, retryAfterSeconds };
}

function splitKey(key: string): [string, string] {
  const i = key.indexOf("\n");
  return [key.slice(0, i), key.slice(i + 1)];
}

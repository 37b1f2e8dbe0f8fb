import type { AuditLog, AuditRecord } from "./audit-log.js";

/** Refusal rows per source and minute at most; the rest of that minute is counted instead. */
export const REFUSALS_AUDITED_PER_MINUTE = 10;
const WINDOW_MS = 60_000;
/** Sources with an open window at most; past it, new sources share one window. */
const MAX_SOURCES = 1000;
const OTHER_SOURCES = "other sources";

export type Refusal = AuditRecord & { source: string };

interface Window {
  key: string;
  action: string;
  start: number;
  written: number;
  suppressed: number;
  timer: NodeJS.Timeout | undefined;
}

/**
 * Audits refused requests (DESIGN §6: bad token, invalid input) without letting a flood fill the
 * log: per source at most `perMinute` rows in a minute, then, when that minute is over, one row
 * saying how many more were refused. A source is what the caller says it is (an address, the
 * unix socket); many sources at once share one window past MAX_SOURCES.
 */
export class RefusalAudit {
  private readonly windows = new Map<string, Window>();

  constructor(
    private readonly audit: AuditLog,
    private readonly perMinute = REFUSALS_AUDITED_PER_MINUTE,
    private readonly now: () => number = Date.now,
    /** What the rows are, as the summary row names them (egress calls share this bound). */
    private readonly what = "refusals",
  ) {}

  record(refusal: Refusal): void {
    const at = this.now();
    const window = this.windowFor(refusal, at);
    if (window.written < this.perMinute) {
      window.written += 1;
      this.audit.record(refusal);
      return;
    }
    window.suppressed += 1;
    // The summary is due when the minute ends, whether or not another refusal comes.
    window.timer ??= setTimeout(() => this.close(window), window.start + WINDOW_MS - at).unref();
  }

  /** Writes the summaries still pending (before the database closes). */
  flush(): void {
    for (const window of [...this.windows.values()]) this.close(window);
  }

  private windowFor(refusal: Refusal, at: number): Window {
    let key = refusal.source;
    let window = this.windows.get(key);
    if (window && at - window.start >= WINDOW_MS) {
      this.close(window);
      window = undefined;
    }
    if (window) return window;
    if (this.windows.size >= MAX_SOURCES) {
      for (const w of [...this.windows.values()]) if (at - w.start >= WINDOW_MS) this.close(w);
      if (this.windows.size >= MAX_SOURCES) {
        key = OTHER_SOURCES;
        window = this.windows.get(key);
        if (window) return window;
      }
    }
    window = { key, action: refusal.action, start: at, written: 0, suppressed: 0, timer: undefined };
    this.windows.set(key, window);
    return window;
  }

  private close(window: Window): void {
    clearTimeout(window.timer);
    if (this.windows.get(window.key) === window) this.windows.delete(window.key);
    if (window.suppressed === 0) return;
    this.audit.record({
      actor: "hypervisor",
      action: window.action,
      source: window.key,
      outcome: "refused",
      details: {
        suppressed: window.suppressed,
        reason: `more than ${this.perMinute} ${this.what} in a minute from this source; only the first ones are recorded`,
        from: new Date(window.start).toISOString(),
        until: new Date(window.start + WINDOW_MS).toISOString(),
      },
    });
  }
}

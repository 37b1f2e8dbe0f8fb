import type { Db } from "../db/database.js";

export interface AuditEntry {
  id: number;
  at: number;
  actor: string;
  action: string;
  target: string | null;
  source: string | null;
  outcome: string;
  durationMs: number | null;
  details: Record<string, unknown> | null;
}

export interface AuditRecord {
  actor: string;
  action: string;
  target?: string;
  source?: string;
  outcome: "ok" | "error" | "refused";
  durationMs?: number;
  /** Never secrets: callers pass identifiers and outcomes only. */
  details?: Record<string, unknown>;
}

/** An entry as the audit table stores it: the duration in a snake_case column, details as JSON text. */
type AuditRow = Omit<AuditEntry, "durationMs" | "details"> & { duration_ms: number | null; details: string | null };

/** Who did what, when, from where, with which result. Append only. */
export class AuditLog {
  constructor(
    private readonly db: Db,
    private readonly now: () => number = Date.now,
  ) {}

  record(entry: AuditRecord): void {
    this.db
      .prepare("INSERT INTO audit (at, actor, action, target, source, outcome, duration_ms, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
      .run(
        this.now(),
        entry.actor,
        entry.action,
        entry.target ?? null,
        entry.source ?? null,
        entry.outcome,
        entry.durationMs ?? null,
        entry.details ? JSON.stringify(entry.details) : null,
      );
  }

  list(opts: { limit: number; before?: number }): AuditEntry[] {
    const rows = this.db
      .prepare("SELECT * FROM audit WHERE id < ? ORDER BY id DESC LIMIT ?")
      .all(opts.before ?? Number.MAX_SAFE_INTEGER, opts.limit) as AuditRow[];
    return rows.map((r) => ({
      id: r.id,
      at: r.at,
      actor: r.actor,
      action: r.action,
      target: r.target,
      source: r.source,
      outcome: r.outcome,
      durationMs: r.duration_ms,
      details: r.details ? (JSON.parse(r.details) as Record<string, unknown>) : null,
    }));
  }
}

import { Counter, Histogram, type Registry } from "prom-client";
import type { AuditLog } from "../audit/audit-log.js";
import { RefusalAudit } from "../audit/refusal-audit.js";
import type { Db } from "../db/database.js";

/** Who called: what the gateway established from the caller's token (DESIGN §5b). */
export interface EgressCaller {
  user: string;
  slot: "a" | "b";
  generation: number;
}

export type EgressDecision = "allowed" | "refused";

/** One call or refusal. Never a secret, a body or a query string: the path is cut at `?`. */
export interface EgressEvent {
  caller: EgressCaller;
  /** `route:<name>` or `host:<name>` (the forward proxy's). */
  target: string;
  /**
   * The metrics' route label: a route of the routes file, `unknown` for a name the sandbox made
   * up, absent for the forward proxy (`proxy`). Never what the sandbox sent: labels stay few.
   */
  route?: string | undefined;
  method: string;
  path: string;
  status: number;
  bytesIn: number;
  bytesOut: number;
  durationMs: number;
  decision: EgressDecision;
  /** Why refused or why it failed; a fixed phrase of the gateway's, never the upstream's words. */
  reason?: string | undefined;
}

export interface EgressLogEntry {
  id: number;
  at: string;
  user: string;
  slot: string | null;
  generation: number | null;
  target: string | null;
  method: string | null;
  path: string | null;
  status: number | null;
  bytesIn: number | null;
  bytesOut: number | null;
  durationMs: number | null;
  decision: string;
  reason: string | null;
}

/** Audit rows per user and minute at most, calls and refusals each; the rest is one summary row. */
export const EGRESS_CALLS_AUDITED_PER_MINUTE = 600;
export const EGRESS_REFUSALS_AUDITED_PER_MINUTE = 10;
/** Paths are cut here: an audit row is a record, not a copy of what the sandbox sent. */
const MAX_PATH = 512;

export const EGRESS_LATENCY_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

/** The path as the audit keeps it: no query, no fragment, bounded. */
export function auditPath(url: string): string {
  const end = url.search(/[?#]/);
  const path = end === -1 ? url : url.slice(0, end);
  return path.length > MAX_PATH ? `${path.slice(0, MAX_PATH)}…` : path;
}

/**
 * An audit row per egress call and per refusal (DESIGN §5b), bounded per user like refused
 * operator calls (§6), and the per-route metrics. The metrics' `route` label is a route name or
 * `proxy`: never a host, so the series stay as many as the routes file has routes.
 */
export class EgressAudit {
  private readonly calls: RefusalAudit;
  private readonly refusals: RefusalAudit;
  private readonly requests: Counter<"route" | "decision" | "status">;
  private readonly bytes: Counter<"route" | "direction">;
  private readonly duration: Histogram<"route">;

  constructor(
    audit: AuditLog,
    private readonly db: Db,
    registry: Registry,
    now: () => number = Date.now,
  ) {
    this.calls = new RefusalAudit(audit, EGRESS_CALLS_AUDITED_PER_MINUTE, now, "egress calls");
    this.refusals = new RefusalAudit(audit, EGRESS_REFUSALS_AUDITED_PER_MINUTE, now, "egress refusals");
    const registers = [registry];
    this.requests = new Counter({
      name: "hypervisor_egress_requests_total",
      help: "Sandbox egress calls by route (or proxy), decision and response status class",
      labelNames: ["route", "decision", "status"],
      registers,
    });
    this.bytes = new Counter({
      name: "hypervisor_egress_bytes_total",
      help: "Bytes through the egress gateway by route (or proxy); in: from the sandbox, out: to it",
      labelNames: ["route", "direction"],
      registers,
    });
    this.duration = new Histogram({
      name: "hypervisor_egress_request_duration_seconds",
      help: "Egress calls from the request's start to the response's end, by route (or proxy)",
      labelNames: ["route"],
      buckets: EGRESS_LATENCY_BUCKETS,
      registers,
    });
  }

  record(event: EgressEvent): void {
    const route = event.route ?? "proxy";
    this.requests.inc({ route, decision: event.decision, status: `${Math.floor(event.status / 100)}xx` });
    this.bytes.inc({ route, direction: "in" }, event.bytesIn);
    this.bytes.inc({ route, direction: "out" }, event.bytesOut);
    if (event.decision === "allowed") this.duration.observe({ route }, event.durationMs / 1000);
    const { caller } = event;
    (event.decision === "allowed" ? this.calls : this.refusals).record({
      actor: `sandbox:${caller.user}/${caller.slot}`,
      action: event.decision === "allowed" ? "egress.call" : "egress.refused",
      target: caller.user,
      // The bound is per user: one flooding sandbox cannot crowd out another's rows.
      source: `egress:${caller.user}`,
      outcome: event.decision === "allowed" ? (event.status >= 500 ? "error" : "ok") : "refused",
      durationMs: Math.round(event.durationMs),
      details: {
        slot: caller.slot,
        generation: caller.generation,
        to: event.target,
        method: event.method,
        path: auditPath(event.path),
        status: event.status,
        bytesIn: event.bytesIn,
        bytesOut: event.bytesOut,
        decision: event.decision,
        ...(event.reason === undefined ? {} : { reason: event.reason }),
      },
    });
  }

  /** The newest egress rows first; one user's when given. */
  log(opts: { user?: string | undefined; tail: number }): EgressLogEntry[] {
    const rows = this.db
      .prepare(
        `SELECT id, at, source, duration_ms, details FROM audit
         WHERE action IN ('egress.call', 'egress.refused') AND (? IS NULL OR source = 'egress:' || ?)
         ORDER BY id DESC LIMIT ?`,
      )
      .all(opts.user ?? null, opts.user ?? null, opts.tail) as { id: number; at: number; source: string; duration_ms: number | null; details: string | null }[];
    return rows.map((r) => {
      const d = (r.details ? JSON.parse(r.details) : {}) as Record<string, unknown>;
      const str = (v: unknown) => (typeof v === "string" ? v : null);
      const num = (v: unknown) => (typeof v === "number" ? v : null);
      return {
        id: r.id,
        at: new Date(r.at).toISOString(),
        user: r.source.slice("egress:".length),
        slot: str(d.slot),
        generation: num(d.generation),
        target: str(d.to),
        method: str(d.method),
        path: str(d.path),
        status: num(d.status),
        bytesIn: num(d.bytesIn),
        bytesOut: num(d.bytesOut),
        durationMs: r.duration_ms,
        // A summary row (how many rows a flood had suppressed) has no decision of its own.
        decision: str(d.decision) ?? "summary",
        reason: str(d.reason),
      };
    });
  }

  /** Writes the summaries still pending (before the database closes). */
  flush(): void {
    this.calls.flush();
    this.refusals.flush();
  }
}

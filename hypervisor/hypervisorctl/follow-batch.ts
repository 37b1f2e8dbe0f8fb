import type { Batch, BatchSummary, UserOutcome } from "../operations/batch.js";
import type { CommandContext } from "./command.js";
import { asLine, duration, userLine } from "./format.js";
import { ApiError, ConnectionError } from "./operator-connection.js";

/** A user's outcome as the wire carries it: the error code is whatever the server named. */
type WireOutcome = Omit<UserOutcome, "error"> & { error?: { code: string; message: string } };

/** How a command shows a per-user batch (a release, a drain) while it runs. */
export interface BatchView<R extends WireOutcome, P extends { user: string }> {
  /** The batch, for messages: `deploy`, `drain`. */
  name: string;
  /** The user column's width at first; it widens to the longest user seen. */
  width: number;
  /** The columns of a user that succeeded, after its name: `a→b`, `gen 3`, `41 ms`. */
  succeeded(r: R): string[];
  /** The columns of a progress line, after the user's name. */
  progress?(p: P): string[];
  /** The last line, from the summary. */
  summary(s: BatchSummary): string;
}

type Line = { type?: string; user?: string; error?: { code?: string; message?: string; requestId?: string } };

/**
 * POSTs a per-user batch and follows it. With --json: the API's JSON answer as is. Otherwise
 * the NDJSON progress, one line per user as it finishes (and while it goes, if the batch tells),
 * then the summary. Exit 1 when any user failed.
 */
export async function followBatch<R extends WireOutcome, P extends { user: string } = never>(
  ctx: CommandContext,
  path: string,
  body: unknown,
  view: BatchView<R, P>,
): Promise<number> {
  if (ctx.json) {
    const res = await ctx.api.json<Batch<R>>("POST", path, body);
    ctx.out(asLine(res.raw));
    return res.body.ok ? 0 : 1;
  }
  let width = view.width;
  const line = (mark: "✓" | "✗" | "…", user: string, columns: string[]) => {
    width = Math.max(width, user.length);
    ctx.out(`${userLine(mark, user, width, columns)}\n`);
  };
  let summary: BatchSummary | undefined;
  await ctx.api.stream(path, body, (received) => {
    const l = received as Line;
    if (l.type === "progress" && view.progress) {
      const p = l as P;
      line("…", p.user, view.progress(p));
    } else if (l.type === "result") {
      const r = l as R;
      if (r.ok) line("✓", r.user, view.succeeded(r));
      else line("✗", r.user, [`${r.error?.code ?? "failed"}: ${r.error?.message ?? ""}`, duration(r.durationMs)]);
    } else if (l.type === "summary") {
      summary = l as BatchSummary;
    } else if (l.type === "error") {
      const e = l.error ?? {};
      throw new ApiError(0, e.code ?? "internal", e.message ?? `the ${view.name} failed`, e.requestId ?? "-", JSON.stringify(l));
    }
  });
  if (!summary) throw new ConnectionError(`the ${view.name} progress stream ended without a summary: the outcome is unknown (see hypervisorctl audit)`);
  ctx.out(`${view.summary(summary)}\n`);
  return summary.ok ? 0 : 1;
}

/** `deploy: 2 of 3 users ok, 1 failed in 1.2 s`. */
export function tally(name: string, s: BatchSummary, done: string): string {
  return `${name}: ${s.users - s.failed} of ${s.users} users ${done}${s.failed ? `, ${s.failed} failed` : ""} in ${duration(s.durationMs)}`;
}

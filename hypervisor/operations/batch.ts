import type { ErrorCode } from "../errors.js";

/** One user's outcome in a per-user operation; a failure is a result too, not an exception. */
export interface UserOutcome {
  user: string;
  ok: boolean;
  durationMs: number;
  error?: { code: ErrorCode; message: string };
}

/**
 * What every per-user operation over many users returns: each user's result, in the order they
 * were asked for, and whether all succeeded. While it runs, each result is also handed to the
 * caller's `onResult` as it finishes (the NDJSON progress stream's `type: result` lines).
 */
export interface Batch<R> {
  ok: boolean;
  durationMs: number;
  results: R[];
}

/** The closing line of a batch's progress stream (`type: summary`). */
export interface BatchSummary {
  ok: boolean;
  durationMs: number;
  users: number;
  failed: number;
}

export function batchOf<R extends UserOutcome>(results: R[], began: number): Batch<R> {
  return { ok: results.every((r) => r.ok), durationMs: Date.now() - began, results };
}

export function summaryOf<R extends UserOutcome>(batch: Batch<R>): BatchSummary {
  return { ok: batch.ok, durationMs: batch.durationMs, users: batch.results.length, failed: batch.results.filter((r) => !r.ok).length };
}

/**
 * Runs `fn` for each user, at most `limit` at once, handing each result to `onResult` as it
 * finishes; the results come back in the order of `items`.
 */
export async function eachLimited<T>(items: string[], limit: number, onResult: ((r: T) => void) | undefined, fn: (item: string) => Promise<T>): Promise<T[]> {
  const results: T[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!);
      onResult?.(results[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

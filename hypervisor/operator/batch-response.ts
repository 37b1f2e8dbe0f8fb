import { z } from "@hono/zod-openapi";
import type { Context } from "hono";
import { asHypervisorError, errorBody, HypervisorError } from "../errors.js";
import type { OperatorEnv } from "./operator-env.js";
import { ErrorSchema } from "./schemas.js";
import { batchOf, summaryOf, type Batch, type UserOutcome } from "../operations/batch.js";

/** What a batch tells while it runs: how a user's step goes, and each user's result as it finishes. */
export interface BatchEvents<R, P> {
  progress(p: P): void;
  result(r: R): void;
}

/** A batch as the responder runs it: it tells `on` as it goes and returns every user's result. */
export type BatchRun<R, P> = (on: BatchEvents<R, P>) => Promise<R[]>;

const SummaryLine = z.object({ type: z.literal("summary"), ok: z.boolean(), durationMs: z.number(), users: z.number(), failed: z.number() });
const ErrorLine = ErrorSchema.extend({ type: z.literal("error") });

/**
 * The wire schemas of a batch called `name`, for the OpenAPI document: its JSON answer
 * (`<name>Result`) and its NDJSON lines (`<name>ProgressLine`): progress while a user's step goes
 * (if the batch tells any), each user's result, then the summary, or the error.
 */
export function batchSchemas<R extends z.AnyZodObject>(name: string, result: R, progress?: z.AnyZodObject) {
  const resultLine = result.extend({ type: z.literal("result") });
  const line = progress
    ? z.discriminatedUnion("type", [z.object({ type: z.literal("progress"), ...progress.shape }), resultLine, SummaryLine, ErrorLine])
    : z.discriminatedUnion("type", [resultLine, SummaryLine, ErrorLine]);
  return {
    answer: z.object({ ok: z.boolean(), durationMs: z.number(), results: z.array(result) }).openapi(`${name}Result`),
    line: line.openapi(`${name}ProgressLine`),
  };
}

export interface BatchResponseOptions {
  /** The audited action, for the log when the batch fails as a whole after its stream began. */
  action: string;
  /** A call for one user that failed answers with that failure's own status (409, 504, …) instead of a 207. */
  soleFailureAsError?: boolean;
}

/**
 * Answers a per-user batch the way the caller asks. With `Accept: application/x-ndjson`: a 200
 * at once, then one line per event as it happens, and the summary last; a batch refused as a
 * whole once the stream has begun ends with `{ type: error, error: { code, message, requestId } }`
 * instead of being cut off. Otherwise JSON when it is done: 200 when every user succeeded, 207
 * with every result when some failed.
 */
export async function batchResponse<R extends UserOutcome, P extends object>(
  c: Context<OperatorEnv>,
  run: BatchRun<R, P>,
  { action, soleFailureAsError = false }: BatchResponseOptions,
): Promise<Response> {
  const began = Date.now();
  if (/application\/x-ndjson/.test(c.req.header("accept") ?? "")) {
    const encoder = new TextEncoder();
    const stream = new ReadableStream<Uint8Array>({
      async start(controller) {
        const line = (value: object) => controller.enqueue(encoder.encode(`${JSON.stringify(value)}\n`));
        try {
          const results = await run({ progress: (p) => line({ type: "progress", ...p }), result: (r) => line({ type: "result", ...r }) });
          line({ type: "summary", ...summaryOf(batchOf(results, began)) });
        } catch (err) {
          // The 200 went out already: the error goes into the stream, in the one error shape.
          const e = asHypervisorError(err);
          // The request's own logger: the line names the id the error line carries.
          if (e.code === "internal") c.get("log").error({ err: e.cause ?? e, action }, "batch failed");
          line({ type: "error", ...errorBody(e, c.get("requestId")) });
        }
        controller.close();
      },
    });
    return new Response(stream, { status: 200, headers: { "content-type": "application/x-ndjson", "cache-control": "no-store" } });
  }

  const results = await run({ progress: () => undefined, result: () => undefined });
  const answer: Batch<R> = batchOf(results, began);
  const sole = results.length === 1 ? results[0]!.error : undefined;
  if (!answer.ok && soleFailureAsError && sole) throw new HypervisorError(sole.code, sole.message, { results });
  return c.json(answer, answer.ok ? 200 : (207 as 200));
}

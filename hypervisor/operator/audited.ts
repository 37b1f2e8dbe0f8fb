import type { Context } from "hono";
import type { AuditLog, AuditRecord } from "../audit/audit-log.js";
import { asHypervisorError } from "../errors.js";
import type { OperatorEnv } from "./operator-env.js";

/** How a finished action is recorded; by default `ok`, without details. */
export type AuditOutcome<T> = (result: T) => Pick<AuditRecord, "outcome" | "details">;

/**
 * Runs an operator action and records it in the audit log with its outcome and duration. An
 * action that throws is recorded as `error` with the error's code and message (written for the
 * caller, so free of secrets), which is what the audit table shows as the reason. Every row names
 * the call's request id (`details.requestId`), as its error body and its log lines do.
 */
export async function audited<T>(
  audit: AuditLog,
  c: Context<OperatorEnv>,
  action: string,
  target: string,
  run: () => Promise<T>,
  outcomeOf: AuditOutcome<T> = () => ({ outcome: "ok" }),
): Promise<T> {
  const began = Date.now();
  // From here on the call is the action's to record, whatever it answers.
  c.set("audited", true);
  const base = { actor: c.get("actor"), source: c.get("source"), action, target };
  const requestId = c.get("requestId");
  let result: T;
  try {
    result = await run();
  } catch (err) {
    const e = asHypervisorError(err);
    audit.record({ ...base, outcome: "error", durationMs: Date.now() - began, details: { code: e.code, message: e.message.slice(0, 300), requestId } });
    throw err;
  }
  const { outcome, details } = outcomeOf(result);
  audit.record({ ...base, outcome, details: { ...details, requestId }, durationMs: Date.now() - began });
  return result;
}

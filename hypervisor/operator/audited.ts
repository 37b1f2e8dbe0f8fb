import type { Context } from "hono";
import { asHypervisorError } from "../errors.js";
import type { Services } from "../services.js";
import type { OperatorEnv } from "./operator-app.js";

/** Runs an operator action and records it in the audit log with its outcome and duration. */
export async function audited<T>(
  services: Services,
  c: Context<OperatorEnv>,
  action: string,
  target: string,
  run: () => Promise<T>,
): Promise<T> {
  const began = Date.now();
  const base = { actor: c.get("actor"), source: c.get("source"), action, target };
  try {
    const result = await run();
    services.audit.record({ ...base, outcome: "ok", durationMs: Date.now() - began });
    return result;
  } catch (err) {
    const e = asHypervisorError(err);
    services.audit.record({ ...base, outcome: "error", durationMs: Date.now() - began, details: { code: e.code } });
    throw err;
  }
}

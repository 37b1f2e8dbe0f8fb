import type { ZodError } from "zod";
import { HypervisorError } from "../errors.js";

/** At most this many issues are listed in the error's details. */
const MAX_ISSUES = 10;

/**
 * A refused input as the one `validation_failed` error: the first issue in the message (with
 * where it is), the first few in `details.issues`.
 */
export function validationFailed(error: ZodError): HypervisorError {
  const issue = error.issues[0];
  const where = issue?.path.length ? `${issue.path.join(".")}: ` : "";
  return new HypervisorError("validation_failed", `${where}${issue?.message ?? "invalid request"}`, {
    issues: error.issues.slice(0, MAX_ISSUES).map((i) => ({ path: i.path.join("."), message: i.message })),
  });
}

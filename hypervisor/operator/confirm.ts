import { z } from "@hono/zod-openapi";
import { HypervisorError } from "../errors.js";

/**
 * The one way a caller confirms a destructive step, on every route that has one: `?confirm=true`
 * in the query, whatever the method (a DELETE has no body to carry it). Without it such a step
 * answers 409 `confirmation_required`, saying what would follow, and changes nothing.
 */
export const ConfirmQuery = z.object({
  confirm: z
    .enum(["true", "false"])
    .default("false")
    .openapi({ description: "`true` to go ahead with a step that deletes data or leaves users without a way back; without it such a step answers 409" }),
});

/** The sentence every refusal ends with; hypervisorctl tells its own flag (--yes) instead. */
export const CONFIRM_HINT = "send it again with ?confirm=true to go ahead";

/** Refuses unless confirmed, saying what the step would do. */
export function requireConfirmation(confirm: "true" | "false" | undefined, consequence: string, details?: Record<string, unknown>): void {
  if (confirm === "true") return;
  throw new HypervisorError("confirmation_required", `${consequence} (${CONFIRM_HINT})`, details);
}

import type { z } from "@hono/zod-openapi";
import type { AuditEntrySchema, AuditListResponse } from "../../operator/audit-routes.js";
import { call, type Command } from "../command.js";
import { clip, duration, table, time } from "../format.js";
import { intOption } from "../options.js";

export const AUDIT_COMMANDS: Command[] = [
  {
    name: "audit",
    usage: "audit [--limit N]",
    summary: "the audit log, newest first",
    options: [{ name: "limit", flag: "--limit N", help: "at most N entries (default 100, at most 1000)" }],
    args: [0, 0],
    async run(ctx, inv) {
      const limit = intOption(inv, "limit", "audit");
      return call<z.infer<typeof AuditListResponse>>(ctx, "GET", `/audit${limit !== undefined ? `?limit=${limit}` : ""}`, undefined, (res) =>
        table(
          ["AT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "DURATION", "SOURCE", "REASON"],
          res.body.entries.map((e) => [
            time(e.at),
            e.actor,
            e.action,
            clip(e.target ?? "-", 40),
            e.outcome,
            e.durationMs === null ? "-" : duration(e.durationMs),
            e.source ?? "-",
            clip(reason(e), 100),
          ]),
        ),
      );
    },
  },
];

/** Why an audited call did not simply succeed, from what its details hold; "-" when it did. */
function reason(e: z.infer<typeof AuditEntrySchema>): string {
  const d = (e.details ?? {}) as { code?: unknown; message?: unknown; reason?: unknown; status?: unknown; users?: unknown; failed?: unknown };
  if (typeof d.code === "string") return typeof d.message === "string" ? `${d.code}: ${d.message}` : d.code;
  if (typeof d.reason === "string") return typeof d.status === "number" ? `${d.reason} (${d.status})` : d.reason;
  if (Array.isArray(d.failed) && d.failed.length) {
    const who = (d.failed as Array<{ user?: unknown; code?: unknown }>).map((f) => `${String(f.user)} ${String(f.code)}`).join(", ");
    return `${d.failed.length} of ${String(d.users)} users failed: ${who}`;
  }
  return "-";
}

import type { z } from "@hono/zod-openapi";
import type { StatusSchema } from "../../operator/status-routes.js";
import { watching, WATCH, type Command } from "../command.js";
import { asLine, duration, fields } from "../format.js";

export const STATUS_COMMANDS: Command[] = [
  {
    name: "status",
    usage: "status [--watch]",
    summary: "daemon health, runtime and capacity",
    details: [
      "Counts sandboxes from the same listing as 'hypervisorctl sandboxes', so the two agree.",
      "Exits 1 when the daemon is not ready (database or container runtime down).",
    ],
    options: [WATCH],
    args: [0, 0],
    async run(ctx, inv) {
      return watching(ctx, inv, "status", async (ctx) => {
        const res = await ctx.api.json<z.infer<typeof StatusSchema>>("GET", "/status");
        const s = res.body;
        const ready = s.ready.database && s.ready.runtime;
        if (ctx.json) ctx.out(asLine(res.raw));
        else {
          const n = s.sandboxes;
          const others = [
            n.unhealthy ? `${n.unhealthy} of them unhealthy` : "",
            n.frozen ? `${n.frozen} frozen` : "",
            n.starting ? `${n.starting} starting` : "",
            n.stopped ? `${n.stopped} stopped` : "",
            n.notStarted ? `${n.notStarted} not started` : "",
          ].filter(Boolean);
          ctx.out(
            fields([
              ["runtime", s.runtime],
              ["uptime", duration(s.uptimeMs)],
              ["ready", `${ready ? "yes" : "NO"} (database ${s.ready.database ? "up" : "DOWN"}, runtime ${s.ready.runtime ? "up" : "DOWN"})`],
              ["users", String(s.users)],
              ["sandboxes", `${n.running} running of ${n.max} at most${others.length ? ` (${others.join(", ")})` : ""}`],
            ]),
          );
        }
        return ready ? 0 : 1;
      });
    },
  },
];

import type { z } from "@hono/zod-openapi";
import type { EgressLogResponse, EgressReloadResponse, EgressRoutesResponse, EgressUsageResponse } from "../../operator/egress-routes.js";
import { call, type Command } from "../command.js";
import { clip, duration, inert, table, time } from "../format.js";
import { intOption, stringOption } from "../options.js";

const userOption = { name: "user", flag: "--user NAME", help: "only this user's" };
const query = (pairs: Record<string, string | number | undefined>) => {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(pairs)) if (v !== undefined) q.set(k, String(v));
  return q.size ? `?${q.toString()}` : "";
};

export const EGRESS_COMMANDS: Command[] = [
  {
    name: "egress routes",
    usage: "egress routes",
    summary: "the egress routes and whether each one's secret is loaded (never its value)",
    args: [0, 0],
    async run(ctx) {
      return call<z.infer<typeof EgressRoutesResponse>>(ctx, "GET", "/egress/routes", undefined, ({ body }) => {
        if (!body.routes.length) return "no egress routes (HYPERVISOR_EGRESS_ROUTES_FILE)\n";
        return table(
          ["ROUTE", "UPSTREAM", "HEADER", "SECRET", "LOADED", "USER KEYS", "RPM", "CONCURRENT", "DAILY"],
          body.routes.map((r) => [
            r.name,
            r.upstream,
            r.header,
            r.secret,
            r.secretLoaded ? "yes" : "NO",
            r.userKeys ? "yes" : "no",
            r.rpm === null ? "-" : String(r.rpm),
            String(r.concurrent),
            [r.dailyRequests === null ? "" : `${r.dailyRequests} req`, r.dailyBytes === null ? "" : `${r.dailyBytes} B`].filter(Boolean).join(", ") || "-",
          ]),
        );
      });
    },
  },
  {
    name: "egress usage",
    usage: "egress usage [--user NAME]",
    summary: "egress budgets in use: this minute's and today's requests and bytes",
    options: [userOption],
    args: [0, 0],
    async run(ctx, inv) {
      return call<z.infer<typeof EgressUsageResponse>>(ctx, "GET", `/egress/usage${query({ user: stringOption(inv, "user") })}`, undefined, ({ body }) => {
        if (!body.usage.length) return "no egress calls counted today\n";
        return table(
          ["USER", "TARGET", "THIS MINUTE", "IN FLIGHT", "TODAY", "BYTES TODAY", "DAY"],
          body.usage.map((u) => [u.user, u.target, String(u.minuteRequests), String(u.concurrent), String(u.dayRequests), String(u.dayBytes), u.day]),
        );
      });
    },
  },
  {
    name: "egress log",
    usage: "egress log [--user NAME] [--tail N]",
    summary: "egress calls and refusals, newest first",
    options: [userOption, { name: "tail", flag: "--tail N", help: "the last N entries (default 100, at most 1000)" }],
    args: [0, 0],
    async run(ctx, inv) {
      const path = `/egress/log${query({ user: stringOption(inv, "user"), tail: intOption(inv, "tail", "egress log") })}`;
      return call<z.infer<typeof EgressLogResponse>>(ctx, "GET", path, undefined, ({ body }) => {
        if (!body.entries.length) return "no egress calls recorded\n";
        return table(
          ["AT", "USER", "SLOT", "GEN", "TO", "METHOD", "PATH", "STATUS", "IN", "OUT", "DURATION", "DECISION", "REASON"],
          body.entries.map((e) => [
            time(e.at),
            e.user,
            e.slot ?? "-",
            e.generation === null ? "-" : String(e.generation),
            clip(inert(e.target ?? "-"), 72),
            // What the sandbox sent, made harmless for the terminal.
            clip(inert(e.method ?? "-"), 10),
            clip(inert(e.path ?? "-"), 60),
            e.status === null ? "-" : String(e.status),
            e.bytesIn === null ? "-" : String(e.bytesIn),
            e.bytesOut === null ? "-" : String(e.bytesOut),
            e.durationMs === null ? "-" : duration(e.durationMs),
            e.decision,
            clip(e.reason ?? "-", 80),
          ]),
        );
      });
    },
  },
  {
    name: "egress reload",
    usage: "egress reload",
    summary: "read the routes file and the secrets again (as SIGHUP does); on failure the previous ones stay",
    args: [0, 0],
    async run(ctx) {
      return call<z.infer<typeof EgressReloadResponse>>(
        ctx,
        "POST",
        "/egress/reload",
        {},
        ({ body }) =>
          `egress routes reloaded: ${body.routes} route(s)` +
          (body.missingSecrets.length ? `; secrets not found (their routes answer 503): ${body.missingSecrets.join(", ")}` : "") +
          "\n",
      );
    },
  },
];

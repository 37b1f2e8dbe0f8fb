import type { z } from "@hono/zod-openapi";
import type { StartProgressSchema, UserResultSchema } from "../../operator/release-routes.js";
import type { Command, CommandContext, OptionSpec } from "../command.js";
import { count, duration } from "../format.js";
import { followBatch, tally } from "../follow-batch.js";
import { flag, intOption, positiveInt, usersOption } from "../options.js";

type ReleaseKind = "deploy" | "swap" | "rollback" | "promote";
type UserResult = z.infer<typeof UserResultSchema>;
type Progress = z.infer<typeof StartProgressSchema>;

const USERS: OptionSpec = { name: "users", flag: "--users a,b", help: "only these users (comma-separated); default: every user" };

export const RELEASE_COMMANDS: Command[] = [
  {
    name: "deploy",
    usage: "deploy GEN [--users a,b] [--with-live-data]",
    summary: "put generation GEN into each user's dev slot and wait until healthy",
    details: [
      "Prints one line per user as it finishes, then a summary. Exits 1 if any user failed.",
      "--with-live-data: then dev's data becomes a copy of live's (dev's own kept as a snapshot),",
      "so the candidate is tried against real data; live is held still only while it is copied.",
    ],
    options: [USERS, { name: "with-live-data", flag: "--with-live-data", help: "give each dev a copy of live's data (a fork)" }],
    args: [1, 1],
    async run(ctx, inv) {
      const generation = positiveInt(inv.args[0]!, "GEN", "deploy");
      const users = usersOption(inv, "deploy");
      return release(ctx, "deploy", { generation, ...(users ? { users } : {}), ...(flag(inv, "with-live-data") ? { withLiveData: true } : {}) }, users);
    },
  },
  {
    name: "swap",
    usage: "swap [--users a,b] [--force]",
    summary: "exchange live and dev, onto a healthy dev only (unless --force)",
    details: ["Prints one line per user as it finishes, then a summary. Exits 1 if any user failed."],
    options: [USERS, { name: "force", flag: "--force", help: "swap even onto a dev sandbox that fails its health check" }],
    args: [0, 0],
    async run(ctx, inv) {
      const users = usersOption(inv, "swap");
      return release(ctx, "swap", { ...(users ? { users } : {}), ...(flag(inv, "force") ? { force: true } : {}) }, users);
    },
  },
  {
    name: "rollback",
    usage: "rollback [--users a,b] [--to GEN] [--data]",
    summary: "live back to the newest known-good generation (or GEN), within the rollback deadline",
    details: [
      "warm: dev already runs the target, so it is a route flip; cold: the target is started first.",
      "Live keeps serving until the target is healthy. Exits 1 if any user failed.",
      "--data: also the data, as that generation left it when the release after it was promoted",
      "(its pre-promote snapshot), in live's own slot; live's data now is kept as a pre-rollback snapshot.",
    ],
    options: [
      USERS,
      { name: "to", flag: "--to GEN", help: "roll back to this generation instead of the newest known-good" },
      { name: "data", flag: "--data", help: "restore the data that generation had too" },
    ],
    args: [0, 0],
    async run(ctx, inv) {
      const users = usersOption(inv, "rollback");
      const to = intOption(inv, "to", "rollback");
      return release(
        ctx,
        "rollback",
        { ...(users ? { users } : {}), ...(to !== undefined ? { to } : {}), ...(flag(inv, "data") ? { data: true } : {}) },
        users,
      );
    },
  },
  {
    name: "promote",
    usage: "promote [--users a,b]",
    summary: "dev's generation takes over live, on live's own data (a pre-promote snapshot is taken first)",
    details: [
      "Per user: requests held, live's data snapshotted (the rollback point), live started with dev's",
      "generation on that data, released once healthy. Not healthy within HYPERVISOR_PROMOTE_DEADLINE_MS:",
      "backed out, live's data restored (what the new generation wrote kept as a snapshot).",
      "Swap exchanges the slots and their data instead. Exits 1 if any user failed.",
    ],
    options: [USERS],
    args: [0, 0],
    async run(ctx, inv) {
      const users = usersOption(inv, "promote");
      return release(ctx, "promote", users ? { users } : {}, users);
    },
  },
];

/** Follows a release: `… alice  waiting for health  12 failed probes  3.1 s  /health: HTTP 503` while a sandbox starts, then `✓ alice  a→b  gen 3  41 ms`. */
function release(ctx: CommandContext, kind: ReleaseKind, body: Record<string, unknown>, users: string[] | undefined): Promise<number> {
  return followBatch<UserResult, Progress>(ctx, `/${kind}`, body, {
    name: kind,
    width: Math.max(8, ...(users ?? []).map((u) => u.length)),
    progress: (p) => [
      p.phase,
      ...(p.attempts ? [count(p.attempts, "failed probe")] : []),
      duration(p.elapsedMs),
      // What the sandbox said last, so a slow start shows why without reading its log.
      ...(p.lastAnswer && p.phase === "waiting for health" ? [`/health: ${p.lastAnswer.slice(0, 80)}`] : []),
    ],
    succeeded: (r) => [
      ...(kind === "deploy"
        ? [`dev ${r.to?.slot ?? "?"}`, `gen ${r.from?.generation ?? "?"}→${r.to?.generation ?? "?"}`]
        : [`${r.from?.slot ?? "?"}→${r.to?.slot ?? "?"}`, `gen ${r.to?.generation ?? "?"}`]),
      ...(r.path ? [r.path] : []),
      ...(r.snapshot ? [`snapshot ${r.snapshot}`] : []),
      ...(r.kept ? [`kept ${r.kept}`] : []),
      duration(r.durationMs),
    ],
    summary: (s) => (s.users === 0 ? `${kind}: no users` : tally(kind, s, "ok")),
  });
}

import type { z } from "@hono/zod-openapi";
import type { SandboxListResponse, SandboxResponse } from "../../operator/sandbox-routes.js";
import { call, UsageError, watching, WATCH, type Command, type CommandContext } from "../command.js";
import { inert, table, time, userLine } from "../format.js";
import { ApiError } from "../operator-connection.js";
import { flag, roleArg, stringOption } from "../options.js";

export const SANDBOX_COMMANDS: Command[] = [
  {
    name: "sandboxes list",
    usage: "sandboxes [list] [--user USER] [--watch]",
    summary: "every user's live and dev sandbox with its state and health",
    details: [
      "HEALTH is one probe of GET /health, made for this listing; '-' when the sandbox does not run or is frozen.",
      "STATE frozen: idle, its memory kept and no CPU (HYPERVISOR_IDLE_FREEZE_MS); its user's next request thaws it.",
      "DISK: how HYPERVISOR_SANDBOX_DISK holds, 'btrfs qgroup' (the kernel refuses writes past it) or 'measured' (stopped when found over it). A sandbox stopped over its disk is listed below the table with why.",
    ],
    options: [{ name: "user", flag: "--user USER", help: "only this user's sandboxes" }, WATCH],
    args: [0, 0],
    async run(ctx, inv) {
      const user = stringOption(inv, "user");
      return watching(ctx, inv, "sandboxes list", (ctx) =>
        call<z.infer<typeof SandboxListResponse>>(ctx, "GET", listPath(user), undefined, (res) => {
          const rows = res.body.sandboxes;
          if (!rows.length) return "no sandboxes: there are no users yet (hypervisorctl users add NAME)\n";
          const over = rows.filter((s) => s.overDisk).map((s) => `${s.user} ${s.role} is stopped over its disk: ${inert(s.overDisk!)}\n`);
          return (
            table(
              ["USER", "ROLE", "SLOT", "GEN", "STATE", "HEALTH", "ENDPOINT", "STARTED", "DISK"],
              rows.map((s) => [
                s.user,
                s.role,
                s.slot,
                String(s.generation),
                s.state,
                s.health ?? "-",
                s.endpoint ? `${s.endpoint.host}:${s.endpoint.port}` : "-",
                time(s.startedAt),
                s.disk ?? "-",
              ]),
            ) + over.join("")
          );
        }),
      );
    },
  },
  {
    name: "sandboxes stop",
    usage: "sandboxes stop USER ROLE | --user USER | --all",
    summary: "stop one sandbox, both of a user's, or every running (or frozen) one",
    details: [
      "ROLE is live or dev. With --user or --all, one line per sandbox stopped; exits 1 if any failed.",
      "A stopped sandbox starts again on its user's next request.",
    ],
    options: [
      { name: "user", flag: "--user USER", help: "both sandboxes of this user" },
      { name: "all", flag: "--all", help: "every running sandbox of every user" },
    ],
    args: [0, 2],
    async run(ctx, inv) {
      const user = stringOption(inv, "user");
      const all = flag(inv, "all");
      if (inv.args.length === 2 && !user && !all) return sandboxAction(ctx, "stop", inv.args[0]!, inv.args[1]!);
      if (inv.args.length || (user !== undefined) === all) throw new UsageError("give USER ROLE, or --user USER, or --all", "sandboxes stop");
      return stopMany(ctx, user);
    },
  },
  ...(["start", "restart"] as const).map((action): Command => ({
    name: `sandboxes ${action}`,
    usage: `sandboxes ${action} USER ROLE`,
    summary: `${action} one user's live or dev sandbox and wait until it is healthy`,
    details: ["ROLE is live or dev."],
    args: [2, 2],
    async run(ctx, inv) {
      return sandboxAction(ctx, action, inv.args[0]!, inv.args[1]!);
    },
  })),
  {
    name: "logs",
    usage: "logs USER ROLE [-f] [--tail N]",
    summary: "a sandbox's stdout and stderr, oldest first",
    details: [
      "ROLE is live or dev. -f keeps printing new lines until the sandbox stops (or Ctrl-C).",
      "--json (without -f) prints { user, role, lines: [...] }.",
    ],
    options: [
      { name: "follow", flag: "-f, --follow", help: "keep printing new lines as the sandbox writes them" },
      { name: "tail", flag: "--tail N", help: "only the last N lines (default 100, at most 10000; 0 with -f: only new ones)" },
    ],
    args: [2, 2],
    async run(ctx, inv) {
      const user = inv.args[0]!;
      const role = roleArg(inv.args[1]!, "logs");
      const tail = stringOption(inv, "tail");
      if (tail !== undefined && !/^\d{1,5}$/.test(tail)) throw new UsageError(`--tail must be a whole number, not '${tail}'`, "logs");
      const follow = flag(inv, "follow");
      if (follow && ctx.json) throw new UsageError("--json does not apply to -f: a followed log has no end to wrap", "logs");
      const query = new URLSearchParams({ ...(tail !== undefined ? { tail } : {}), ...(follow ? { follow: "true" } : {}) }).toString();
      const path = `${sandboxPath(user, role)}/logs${query ? `?${query}` : ""}`;
      if (follow) {
        // A sandbox is untrusted: what it printed reaches the terminal without its control characters.
        await ctx.api.textStream(path, (text) => ctx.out(inert(text)));
        return 0;
      }
      const text = await ctx.api.text(path);
      if (ctx.json) ctx.out(`${JSON.stringify({ user, role, lines: text ? text.replace(/\n$/, "").split("\n") : [] })}\n`);
      else ctx.out(inert(text));
      return 0;
    },
  },
];

function listPath(user: string | undefined): string {
  return `/sandboxes${user ? `?user=${encodeURIComponent(user)}` : ""}`;
}

function sandboxPath(user: string, role: string): string {
  return `/sandboxes/${encodeURIComponent(user)}/${role}`;
}

async function sandboxAction(ctx: CommandContext, action: "start" | "stop" | "restart", user: string, role: string): Promise<number> {
  roleArg(role, `sandboxes ${action}`);
  return call<z.infer<typeof SandboxResponse>>(ctx, "POST", `${sandboxPath(user, role)}/${action}`, undefined, (res) => {
    const s = res.body.sandbox;
    const where = s.endpoint ? `, ${s.endpoint.host}:${s.endpoint.port}` : "";
    return `${s.user} ${s.role}: ${s.state} (slot ${s.slot}, generation ${s.generation}${where})\n`;
  });
}

/** Containers stop a few at a time, as a deploy starts them: each stop waits for its sandbox. */
const STOP_CONCURRENCY = 4;

/** Stops both sandboxes of `user`, or (no user) every running, frozen or starting one; one line each. */
async function stopMany(ctx: CommandContext, user: string | undefined): Promise<number> {
  const listed = await ctx.api.json<z.infer<typeof SandboxListResponse>>("GET", listPath(user));
  const targets = listed.body.sandboxes.filter((s) => user !== undefined || s.state === "running" || s.state === "frozen" || s.state === "starting");
  const results: Array<{ user: string; role: string; ok: boolean; state?: string; error?: { code: string; message: string } }> = [];
  const width = Math.max(8, ...targets.map((s) => s.user.length));
  let next = 0;
  const worker = async () => {
    while (next < targets.length) {
      const s = targets[next++]!;
      try {
        const res = await ctx.api.json<z.infer<typeof SandboxResponse>>("POST", `${sandboxPath(s.user, s.role)}/stop`);
        results.push({ user: s.user, role: s.role, ok: true, state: res.body.sandbox.state });
        if (!ctx.json) ctx.out(`${userLine("✓", s.user, width, [s.role.padEnd(4), res.body.sandbox.state])}\n`);
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        results.push({ user: s.user, role: s.role, ok: false, error: { code: err.code, message: err.message } });
        if (!ctx.json) ctx.out(`${userLine("✗", s.user, width, [s.role.padEnd(4), `${err.code}: ${err.message}`])}\n`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(STOP_CONCURRENCY, targets.length) }, worker));
  const failed = results.filter((r) => !r.ok).length;
  if (ctx.json) ctx.out(`${JSON.stringify({ ok: failed === 0, results })}\n`);
  else if (!targets.length) ctx.out("no running sandboxes\n");
  else ctx.out(`stopped ${results.length - failed} of ${targets.length} sandboxes${failed ? `, ${failed} failed` : ""}\n`);
  return failed ? 1 : 0;
}

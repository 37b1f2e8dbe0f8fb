import type { z } from "@hono/zod-openapi";
import type { AuditListResponse } from "../operator/audit-routes.js";
import type { DrainProgressLineSchema, DrainResultSchema, HostListResponse, HostResponse, HostSchema, MoveResultSchema } from "../operator/host-routes.js";
import type { GenerationListResponse, GenerationResponse, GenerationSchema } from "../operator/generation-routes.js";
import type { InviteListResponse, NewInviteSchema } from "../operator/invite-routes.js";
import type { ReleaseProgressLineSchema, ReleaseResultSchema, UserResultSchema } from "../operator/release-routes.js";
import type { SandboxListResponse, SandboxResponse } from "../operator/sandbox-routes.js";
import type { AuditEntrySchema } from "../operator/audit-routes.js";
import type { StatusSchema } from "../operator/status-routes.js";
import type {
  SessionsRevokedResponse,
  UserChangeResponse,
  UserListResponse,
  UserPurgedResponse,
  UserRemovedResponse,
  UserSchema,
} from "../operator/user-routes.js";
import { open, rm } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { resolve } from "node:path";
import { completionScript, SHELLS, type Shell } from "./completion.js";
import { clip, duration, fields, inert, pad, table, time } from "./format.js";
import { GLOBAL_OPTIONS, type OptionSpec } from "./global-options.js";
import { ApiError, ConnectionError, type ApiResponse, type OperatorConnection } from "./operator-connection.js";

/** Bad command line: exit code 2, with a pointer to --help. */
export class UsageError extends Error {
  override name = "UsageError";
  constructor(
    message: string,
    /** The command whose help to point at, if known. */
    readonly command?: string,
  ) {
    super(message);
  }
}

export interface CommandContext {
  api: OperatorConnection;
  json: boolean;
  out(text: string): void;
}

export interface Invocation {
  /** Positional arguments after the command's name. */
  args: string[];
  /** Arguments after `--`. */
  rest: string[];
  options: Record<string, string | boolean | undefined>;
}

export type { OptionSpec };

export interface Command {
  /** `swap`, `sandboxes start`. */
  name: string;
  usage: string;
  summary: string;
  /** More help text, shown by `--help` only. */
  details?: string[];
  options?: OptionSpec[];
  /** Positional arguments, at least and at most. */
  args: [number, number];
  /** Whether it takes `-- CMD...`. */
  rest?: boolean;
  run(ctx: CommandContext, inv: Invocation): Promise<number>;
}

const WATCH: OptionSpec = { name: "watch", flag: "--watch", help: "redraw every 2 s until Ctrl-C (not with --json)" };
const USERS: OptionSpec = { name: "users", flag: "--users a,b", help: "only these users (comma-separated); default: every user" };

export const COMMANDS: Command[] = [
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
        if (ctx.json) ctx.out(`${res.raw}\n`);
        else {
          const n = s.sandboxes;
          const others = [
            n.unhealthy ? `${n.unhealthy} of them unhealthy` : "",
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
  {
    name: "sandboxes list",
    usage: "sandboxes [list] [--user USER] [--watch]",
    summary: "every user's live and dev sandbox with its state and health",
    details: ["HEALTH is one probe of GET /health, made for this listing; '-' when the sandbox does not run."],
    options: [{ name: "user", flag: "--user USER", help: "only this user's sandboxes" }, WATCH],
    args: [0, 0],
    async run(ctx, inv) {
      const user = stringOption(inv, "user");
      return watching(ctx, inv, "sandboxes list", (ctx) =>
        call<z.infer<typeof SandboxListResponse>>(ctx, "GET", `/sandboxes${user ? `?user=${encodeURIComponent(user)}` : ""}`, undefined, (res) => {
          const rows = res.body.sandboxes;
          if (!rows.length) return "no sandboxes: there are no users yet (hypervisorctl users add NAME)\n";
          return table(
            ["USER", "ROLE", "SLOT", "GEN", "STATE", "HEALTH", "ENDPOINT", "STARTED"],
            rows.map((s) => [
              s.user,
              s.role,
              s.slot,
              String(s.generation),
              s.state,
              s.health ?? "-",
              s.endpoint ? `${s.endpoint.host}:${s.endpoint.port}` : "-",
              time(s.startedAt),
            ]),
          );
        }),
      );
    },
  },
  {
    name: "sandboxes stop",
    usage: "sandboxes stop USER ROLE | --user USER | --all",
    summary: "stop one sandbox, both of a user's, or every running one",
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
      const all = inv.options.all === true;
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
      const [user, role] = inv.args as [string, string];
      if (role !== "live" && role !== "dev") throw new UsageError(`ROLE must be live or dev, not '${role}'`, "logs");
      const tail = stringOption(inv, "tail");
      if (tail !== undefined && !/^\d{1,5}$/.test(tail)) throw new UsageError(`--tail must be a whole number, not '${tail}'`, "logs");
      const follow = inv.options.follow === true;
      if (follow && ctx.json) throw new UsageError("--json does not apply to -f: a followed log has no end to wrap", "logs");
      const query = new URLSearchParams({ ...(tail !== undefined ? { tail } : {}), ...(follow ? { follow: "true" } : {}) }).toString();
      const path = `/sandboxes/${encodeURIComponent(user)}/${role}/logs${query ? `?${query}` : ""}`;
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
  {
    name: "users add",
    usage: "users add NAME",
    summary: "provision a user; both slots get the default generation",
    details: ["NAME: 1-32 of a-z, 0-9 and inner '-'."],
    args: [1, 1],
    async run(ctx, inv) {
      return call<z.infer<typeof UserSchema>>(
        ctx,
        "POST",
        "/users",
        { name: inv.args[0] },
        ({ body: u }) => `user ${u.name} created: live in slot ${u.live}, dev in slot ${u.dev}, generation ${u.generation}\n`,
      );
    },
  },
  // --- users: operators' commands (list, disable, enable, remove, sessions) ---
  {
    name: "users list",
    usage: "users [list]",
    summary: "every user: enabled or disabled, open sessions, what live and dev run",
    args: [0, 0],
    async run(ctx) {
      return call<z.infer<typeof UserListResponse>>(ctx, "GET", "/users", undefined, (res) => {
        if (!res.body.users.length) return "no users yet (hypervisorctl users add NAME, or open registration)\n";
        return table(
          ["USER", "STATE", "SESSIONS", "LIVE", "DEV", "CREATED"],
          res.body.users.map((u) => [
            u.name,
            u.disabledAt ? `disabled ${time(u.disabledAt)}` : "enabled",
            String(u.sessions),
            `${u.live.slot} gen ${u.live.generation}`,
            `${u.dev.slot} gen ${u.dev.generation}`,
            time(u.createdAt),
          ]),
        );
      });
    },
  },
  ...(["disable", "enable"] as const).map((action): Command => ({
    name: `users ${action}`,
    usage: `users ${action} USER`,
    summary:
      action === "disable" ? "block a user's sign-in and proxied requests and end its sessions; sandboxes and data stay" : "let a disabled user sign in again",
    args: [1, 1],
    async run(ctx, inv) {
      return call<z.infer<typeof UserChangeResponse>>(ctx, "POST", `/users/${encodeURIComponent(inv.args[0]!)}/${action}`, undefined, ({ body }) =>
        action === "disable"
          ? `user ${body.user.name} disabled; ${body.revokedSessions} session${body.revokedSessions === 1 ? "" : "s"} ended\n`
          : `user ${body.user.name} enabled: it can sign in again\n`,
      );
    },
  })),
  {
    name: "users remove",
    usage: "users remove USER [--purge]",
    summary: "stop and remove a user's sandboxes, sessions and passkeys; its data stays unless --purge",
    details: [
      "Without --purge the data volumes (podman) or data directories (process) stay, and the name",
      "stays reserved until users purge deletes them. --purge deletes them too: it cannot be undone.",
    ],
    options: [{ name: "purge", flag: "--purge", help: "delete the user's sandbox data too" }],
    args: [1, 1],
    async run(ctx, inv) {
      const purge = inv.options.purge === true;
      const path = `/users/${encodeURIComponent(inv.args[0]!)}${purge ? "?purge=true" : ""}`;
      return call<z.infer<typeof UserRemovedResponse>>(ctx, "DELETE", path, undefined, ({ body }) =>
        body.purged ? `user ${body.name} removed, with its data\n` : `user ${body.name} removed; its sandbox data is kept (--purge deletes it)\n`,
      );
    },
  },
  {
    name: "users purge",
    usage: "users purge USER",
    summary: "delete the data a removed user left behind, on every host, and free its name",
    args: [1, 1],
    async run(ctx, inv) {
      return call<z.infer<typeof UserPurgedResponse>>(
        ctx,
        "POST",
        `/users/${encodeURIComponent(inv.args[0]!)}/purge`,
        undefined,
        ({ body }) => `data of removed user ${body.name} deleted; the name is free again\n`,
      );
    },
  },
  {
    name: "users sessions revoke",
    usage: "users sessions revoke USER",
    summary: "end every session of a user: each of its browsers must sign in again",
    args: [1, 1],
    async run(ctx, inv) {
      return call<z.infer<typeof SessionsRevokedResponse>>(
        ctx,
        "POST",
        `/users/${encodeURIComponent(inv.args[0]!)}/sessions/revoke`,
        undefined,
        ({ body }) => `${body.revokedSessions} session${body.revokedSessions === 1 ? "" : "s"} of ${body.user} ended\n`,
      );
    },
  },
  {
    name: "users move",
    usage: "users move USER HOST",
    summary: "move a user's sandboxes and data to another host; on failure the user stays where they were",
    args: [2, 2],
    async run(ctx, inv) {
      const [user, host] = inv.args as [string, string];
      return call<z.infer<typeof MoveResultSchema>>(
        ctx,
        "POST",
        `/users/${encodeURIComponent(user)}/move`,
        { host },
        ({ body: r }) => `user ${r.user} moved from ${r.from ?? "nowhere yet"} to ${r.to} in ${duration(r.durationMs)}\n`,
      );
    },
  },
  {
    name: "hosts list",
    usage: "hosts [list]",
    summary: "every Podman host with its state, users and sandboxes",
    args: [0, 0],
    async run(ctx) {
      return call<z.infer<typeof HostListResponse>>(ctx, "GET", "/hosts", undefined, (res) => {
        if (!res.body.hosts.length) return "no hosts (the process runtime has none; hosts need HYPERVISOR_RUNTIME=podman)\n";
        return table(
          ["NAME", "STATE", "USERS", "SANDBOXES", "CAPACITY", "ADDRESS", "URL", "LAST ERROR"],
          res.body.hosts.map((h) => [
            h.name,
            h.state,
            String(h.users),
            h.sandboxes === null ? "?" : String(h.sandboxes),
            String(h.capacity),
            h.address,
            h.url,
            clip(h.lastError ?? "-", 80),
          ]),
        );
      });
    },
  },
  {
    name: "hosts add",
    usage: "hosts add NAME URL --address ADDR --capacity N",
    summary: "register a Podman host (unix://, ssh://user@host[:port]/path or tcp:// on a private network)",
    details: [
      "ADDR is where the host publishes sandbox ports; N is how many sandboxes it holds at most",
      "(each user reserves two). The host must answer before it is registered. For ssh:// the",
      "hypervisor signs in with HYPERVISOR_SSH_KEY_FILE and trusts only the keys of",
      "HYPERVISOR_SSH_KNOWN_HOSTS_FILE.",
      "",
      "Example:",
      "  hypervisorctl hosts add sandbox-1 ssh://hypervisor@10.0.0.2/run/podman/podman.sock --address 10.0.0.2 --capacity 60",
    ],
    options: [
      { name: "address", flag: "--address ADDR", help: "the address sandbox ports are published on (required)" },
      { name: "capacity", flag: "--capacity N", help: "sandboxes at most (required)" },
    ],
    args: [2, 2],
    async run(ctx, inv) {
      const [name, url] = inv.args as [string, string];
      const address = stringOption(inv, "address");
      const capacity = intOption(inv, "capacity", "hosts add");
      if (address === undefined || capacity === undefined) throw new UsageError("hosts add needs --address ADDR and --capacity N", "hosts add");
      return call<z.infer<typeof HostResponse>>(
        ctx,
        "POST",
        "/hosts",
        { name, url, address, capacity },
        ({ body: { host } }) => `host ${host.name} registered: ${hostLine(host)}\n`,
      );
    },
  },
  ...(["cordon", "uncordon"] as const).map((action): Command => ({
    name: `hosts ${action}`,
    usage: `hosts ${action} NAME`,
    summary: action === "cordon" ? "give a host no new users (its users stay)" : "let a cordoned or drained host take new users again",
    args: [1, 1],
    async run(ctx, inv) {
      return call<z.infer<typeof HostResponse>>(
        ctx,
        "POST",
        `/hosts/${encodeURIComponent(inv.args[0]!)}/${action}`,
        undefined,
        ({ body: { host } }) => `host ${host.name}: ${hostLine(host)}\n`,
      );
    },
  })),
  {
    name: "hosts drain",
    usage: "hosts drain NAME",
    summary: "move every user off a host, one by one, with live progress; exit 1 when any move failed",
    args: [1, 1],
    async run(ctx, inv) {
      const path = `/hosts/${encodeURIComponent(inv.args[0]!)}/drain`;
      if (ctx.json) {
        const res = await ctx.api.json<z.infer<typeof DrainResultSchema>>("POST", path);
        ctx.out(`${res.raw}\n`);
        return res.body.ok ? 0 : 1;
      }
      type Line = z.infer<typeof DrainProgressLineSchema>;
      let summary: Extract<Line, { type: "summary" }> | undefined;
      await ctx.api.stream(path, {}, (received) => {
        const line = received as Partial<Line>;
        if (line.type === "result") {
          const r = line as Extract<Line, { type: "result" }>;
          ctx.out(
            r.ok
              ? `✓ ${pad(r.user, 12)}  ${r.from ?? "?"}→${r.to ?? "?"}  ${duration(r.durationMs)}\n`
              : `✗ ${pad(r.user, 12)}  ${r.error?.code ?? "failed"}: ${r.error?.message ?? ""}  ${duration(r.durationMs)}\n`,
          );
        } else if (line.type === "summary") {
          summary = line as Extract<Line, { type: "summary" }>;
        } else if (line.type === "error") {
          const e: Partial<Extract<Line, { type: "error" }>["error"]> = line.error ?? {};
          throw new ApiError(0, e.code ?? "internal", e.message ?? "the drain failed", e.requestId ?? "-", JSON.stringify(line));
        }
      });
      if (!summary) throw new ConnectionError("the drain progress stream ended without a summary: the outcome is unknown (see hypervisorctl audit)");
      ctx.out(
        `drain: ${summary.users - summary.failed} of ${summary.users} users moved${summary.failed ? `, ${summary.failed} failed` : ""} in ${duration(summary.durationMs)}\n`,
      );
      return summary.ok ? 0 : 1;
    },
  },
  {
    name: "hosts remove",
    usage: "hosts remove NAME",
    summary: "remove a host that holds no user (drain it first)",
    args: [1, 1],
    async run(ctx, inv) {
      const name = inv.args[0]!;
      await ctx.api.json("DELETE", `/hosts/${encodeURIComponent(name)}`);
      ctx.out(ctx.json ? `{"removed":${JSON.stringify(name)}}\n` : `host ${name} removed\n`);
      return 0;
    },
  },
  {
    name: "invites create",
    usage: "invites create [--hours N]",
    summary: "a single-use invite code (HYPERVISOR_REGISTRATION=invite); the code is shown once",
    options: [{ name: "hours", flag: "--hours N", help: "valid for N hours (default 168, at most 2160)" }],
    args: [0, 0],
    async run(ctx, inv) {
      const hours = intOption(inv, "hours", "invites create");
      return call<z.infer<typeof NewInviteSchema>>(
        ctx,
        "POST",
        "/invites",
        hours === undefined ? {} : { expiresInHours: hours },
        ({ body: i }) =>
          `invite ${i.id} created, valid until ${time(i.expiresAt)}; the code is shown only now:\n  ${i.code}\n` +
          `send the invitee this link, which fills it in:\n  ${i.registerUrl}\n`,
      );
    },
  },
  {
    name: "invites list",
    usage: "invites list",
    summary: "every invite with its state (never the codes)",
    args: [0, 0],
    async run(ctx) {
      return call<z.infer<typeof InviteListResponse>>(ctx, "GET", "/invites", undefined, (res) => {
        if (!res.body.invites.length) return "no invites\n";
        return table(
          ["ID", "STATE", "CREATED BY", "CREATED", "EXPIRES", "USED BY"],
          res.body.invites.map((i) => [String(i.id), i.state, i.createdBy, time(i.createdAt), time(i.expiresAt), i.usedBy ?? "-"]),
        );
      });
    },
  },
  {
    name: "generations list",
    usage: "generations [list]",
    summary: "every generation with its state and how many users run it",
    args: [0, 0],
    async run(ctx) {
      const count = (g: z.infer<typeof GenerationSchema>, role: "live" | "dev") => String(g.runsIn.filter((p) => p.role === role).length);
      return call<z.infer<typeof GenerationListResponse>>(ctx, "GET", "/generations", undefined, (res) =>
        table(
          ["ID", "STATE", "VERSION", "RUNTIME", "LIVE", "DEV", "CREATED", "SOURCE"],
          res.body.generations.map((g) => [
            String(g.id),
            g.state,
            g.version,
            g.runtime,
            count(g, "live"),
            count(g, "dev"),
            time(g.createdAt),
            clip(g.image ? `${g.image} (${g.imageId ?? "?"})` : (g.command ?? []).join(" "), 100),
          ]),
        ),
      );
    },
  },
  {
    name: "generations add",
    usage: "generations add IMAGE | --version V -- CMD...",
    summary: "record a new candidate generation",
    details: [
      "podman runtime: IMAGE is a reference in the local image store (never pulled); it is",
      "resolved to its immutable image ID. Adding an image ID already recorded answers that one.",
      "process runtime: --version V names it and everything after -- is the command to run.",
      "",
      "Examples:",
      "  hypervisorctl generations add localhost/hypervisor-sandbox:2024-05-01",
      "  hypervisorctl generations add --version 2 -- /usr/bin/node /srv/sandbox/server.js --version=2",
    ],
    options: [{ name: "version", flag: "--version V", help: "the version of a process-runtime generation (needs -- CMD...)" }],
    args: [0, 1],
    rest: true,
    async run(ctx, inv) {
      const version = stringOption(inv, "version");
      let body: { image: string } | { command: string[]; version: string };
      if (inv.args.length === 1 && version === undefined && inv.rest.length === 0) body = { image: inv.args[0]! };
      else if (inv.args.length === 0 && version !== undefined && inv.rest.length > 0) body = { command: inv.rest, version };
      else throw new UsageError("give either IMAGE, or --version V -- CMD...", "generations add");
      return call<z.infer<typeof GenerationResponse>>(ctx, "POST", "/generations", body, (res) => {
        const g = res.body.generation;
        return res.status === 201
          ? `generation ${g.id} recorded as ${g.state}: version ${g.version} (${g.runtime})\n`
          : `generation ${g.id} already records this image (${g.imageId ?? g.image}); state ${g.state}\n`;
      });
    },
  },
  ...(["known-good", "bad"] as const).map((state): Command => ({
    name: `generations ${state}`,
    usage: `generations ${state} ID`,
    summary: state === "known-good" ? "mark a generation known-good (a rollback target)" : "mark a generation bad (never deployed again)",
    args: [1, 1],
    async run(ctx, inv) {
      const id = positiveInt(inv.args[0]!, "ID", `generations ${state}`);
      return call<z.infer<typeof GenerationResponse>>(
        ctx,
        "POST",
        `/generations/${id}/${state}`,
        undefined,
        (res) => `generation ${id} is now ${res.body.generation.state}\n`,
      );
    },
  })),
  {
    name: "deploy",
    usage: "deploy GEN [--users a,b]",
    summary: "put generation GEN into each user's dev slot and wait until healthy",
    details: ["Prints one line per user as it finishes, then a summary. Exits 1 if any user failed."],
    options: [USERS],
    args: [1, 1],
    async run(ctx, inv) {
      const generation = positiveInt(inv.args[0]!, "GEN", "deploy");
      const users = usersOption(inv, "deploy");
      return release(ctx, "deploy", { generation, ...(users ? { users } : {}) }, users);
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
      return release(ctx, "swap", { ...(users ? { users } : {}), ...(inv.options.force ? { force: true } : {}) }, users);
    },
  },
  {
    name: "rollback",
    usage: "rollback [--users a,b] [--to GEN]",
    summary: "live back to the newest known-good generation (or GEN), within the rollback deadline",
    details: [
      "warm: dev already runs the target, so it is a route flip; cold: the target is started first.",
      "Live keeps serving until the target is healthy. Exits 1 if any user failed.",
    ],
    options: [USERS, { name: "to", flag: "--to GEN", help: "roll back to this generation instead of the newest known-good" }],
    args: [0, 0],
    async run(ctx, inv) {
      const users = usersOption(inv, "rollback");
      const to = intOption(inv, "to", "rollback");
      return release(ctx, "rollback", { ...(users ? { users } : {}), ...(to !== undefined ? { to } : {}) }, users);
    },
  },
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
  {
    name: "backup",
    usage: "backup FILE",
    summary: "write a consistent copy of the state database (SQLite online backup) to FILE",
    details: [
      "The daemon sends the copy; hypervisorctl writes it, to a new FILE only (mode 0600): it holds",
      "sessions and credentials, hashed. Take one before every upgrade; restoring it is in",
      'deploy/RUNBOOK.md, "Rolling back an upgrade".',
    ],
    args: [1, 1],
    async run(ctx, inv) {
      const file = resolve(inv.args[0]!);
      let handle;
      try {
        handle = await open(file, "wx", 0o600);
      } catch (err) {
        throw new ConnectionError(`cannot create ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      let headers;
      try {
        // The stream closes the file when the copy is in.
        headers = await ctx.api.download("/backup", "application/vnd.sqlite3", handle.createWriteStream());
        const size = await syncedSize(file);
        if (String(size) !== headers["content-length"]) throw new ConnectionError(`the copy arrived incomplete: ${size} of ${headers["content-length"]} bytes`);
      } catch (err) {
        await handle.close().catch(() => undefined);
        await rm(file, { force: true });
        throw err;
      }
      const schemaVersion = Number(headers["x-hypervisor-schema-version"]);
      const bytes = Number(headers["content-length"]);
      if (ctx.json) ctx.out(`${JSON.stringify({ file, bytes, schemaVersion })}\n`);
      else ctx.out(`backup of schema version ${schemaVersion} written to ${file} (${bytes} bytes)\n`);
      return 0;
    },
  },
  {
    name: "completion",
    usage: "completion bash|zsh",
    summary: "a shell completion script for every command and option (--json does not apply)",
    details: ["bash: hypervisorctl completion bash > /etc/bash_completion.d/hypervisorctl", "zsh:  source <(hypervisorctl completion zsh)  in ~/.zshrc"],
    args: [1, 1],
    async run(ctx, inv) {
      const shell = inv.args[0]!;
      if (!(SHELLS as readonly string[]).includes(shell)) throw new UsageError(`SHELL must be ${SHELLS.join(" or ")}, not '${shell}'`, "completion");
      ctx.out(completionScript(shell as Shell, COMMANDS, GLOBAL_OPTIONS));
      return 0;
    },
  },
  {
    name: "metrics",
    usage: "metrics",
    summary: "the Prometheus metrics, as text (--json does not apply)",
    args: [0, 0],
    async run(ctx) {
      ctx.out(await ctx.api.text("/metrics"));
      return 0;
    },
  },
];

/** The file's size once it is on disk: a backup is what an upgrade falls back on. */
async function syncedSize(file: string): Promise<number> {
  const written = await open(file, "r");
  try {
    await written.sync();
    return (await written.stat()).size;
  } finally {
    await written.close();
  }
}

/** Commands that are groups of subcommands, and the one a bare group name means. */
export const GROUPS: Record<string, { summary: string; default?: string }> = {
  sandboxes: { summary: "list, start, stop and restart sandboxes", default: "list" },
  users: { summary: "add, list, disable, enable and remove users; end their sessions", default: "list" },
  invites: { summary: "create and list invite codes" },
  generations: { summary: "list, add and mark generations", default: "list" },
  hosts: { summary: "list, add, cordon, drain and remove Podman hosts", default: "list" },
};

// --- deploy, swap, rollback ------------------------------------------------------------------

type ReleaseKind = "deploy" | "swap" | "rollback";

type ProgressLine = z.infer<typeof ReleaseProgressLineSchema>;
type UserResult = z.infer<typeof UserResultSchema>;
type Summary = Extract<ProgressLine, { type: "summary" }>;
type Progress = Extract<ProgressLine, { type: "progress" }>;

/** `… alice     waiting for health  12 failed probes  3.1 s`, while a user's sandbox starts. */
export function progressNote(p: Progress, width: number): string {
  const probes = p.attempts ? `  ${p.attempts} failed probe${p.attempts === 1 ? "" : "s"}` : "";
  return `… ${pad(p.user, width)}  ${p.phase}${probes}  ${duration(p.elapsedMs)}`;
}

/**
 * With --json: the API's JSON result as is. Otherwise NDJSON progress, one line per user as it
 * finishes, then a summary. Exit 1 when any user failed.
 */
async function release(ctx: CommandContext, kind: ReleaseKind, body: Record<string, unknown>, users: string[] | undefined): Promise<number> {
  if (ctx.json) {
    const res = await ctx.api.json<z.infer<typeof ReleaseResultSchema>>("POST", `/${kind}`, body);
    ctx.out(`${res.raw}\n`);
    return res.body.ok ? 0 : 1;
  }
  let width = Math.max(8, ...(users ?? []).map((u) => u.length));
  let summary: Summary | undefined;
  await ctx.api.stream(`/${kind}`, body, (received) => {
    const line = received as Partial<ProgressLine>;
    if (line.type === "progress") {
      const p = line as Progress;
      width = Math.max(width, p.user.length);
      ctx.out(`${progressNote(p, width)}\n`);
    } else if (line.type === "result") {
      const r = line as UserResult;
      width = Math.max(width, r.user.length);
      ctx.out(`${progressLine(kind, r, width)}\n`);
    } else if (line.type === "summary") {
      summary = line as Summary;
    } else if (line.type === "error") {
      const e: Partial<Extract<ProgressLine, { type: "error" }>["error"]> = line.error ?? {};
      throw new ApiError(0, e.code ?? "internal", e.message ?? "the operation failed", e.requestId ?? "-", JSON.stringify(line));
    }
  });
  if (!summary) throw new ConnectionError(`the ${kind} progress stream ended without a summary: the outcome is unknown (see hypervisorctl audit)`);
  const ok = summary.users - summary.failed;
  ctx.out(
    summary.users === 0
      ? `${kind}: no users\n`
      : `${kind}: ${ok} of ${summary.users} users ok${summary.failed ? `, ${summary.failed} failed` : ""} in ${duration(summary.durationMs)}\n`,
  );
  return summary.ok ? 0 : 1;
}

/** `✓ alice     a→b  gen 3  41 ms` or `✗ bob       unhealthy_target: …  12 ms`. */
export function progressLine(kind: ReleaseKind, r: UserResult, width: number): string {
  const took = duration(r.durationMs);
  if (!r.ok) return `✗ ${pad(r.user, width)}  ${r.error?.code ?? "failed"}: ${r.error?.message ?? ""}  ${took}`;
  const parts = [`✓ ${pad(r.user, width)}`];
  if (kind === "deploy") parts.push(`dev ${r.to?.slot ?? "?"}`, `gen ${r.from?.generation ?? "?"}→${r.to?.generation ?? "?"}`);
  else parts.push(`${r.from?.slot ?? "?"}→${r.to?.slot ?? "?"}`, `gen ${r.to?.generation ?? "?"}`);
  if (r.path) parts.push(r.path);
  parts.push(took);
  return parts.join("  ");
}

/**
 * One API call and its answer: with --json the API's JSON as is, otherwise what `render` makes
 * of it. Always exit 0, because the connection throws an error answer as an ApiError.
 */
async function call<T>(
  ctx: CommandContext,
  method: "GET" | "POST" | "DELETE",
  path: string,
  body: unknown,
  render: (res: ApiResponse<T>) => string,
): Promise<number> {
  const res = await ctx.api.json<T>(method, path, body);
  ctx.out(ctx.json ? (res.raw.endsWith("\n") ? res.raw : `${res.raw}\n`) : render(res));
  return 0;
}

// --- sandboxes, watch, audit ---------------------------------------------------------------------

async function sandboxAction(ctx: CommandContext, action: "start" | "stop" | "restart", user: string, role: string): Promise<number> {
  if (role !== "live" && role !== "dev") throw new UsageError(`ROLE must be live or dev, not '${role}'`, `sandboxes ${action}`);
  return call<z.infer<typeof SandboxResponse>>(ctx, "POST", `/sandboxes/${encodeURIComponent(user)}/${role}/${action}`, undefined, (res) => {
    const s = res.body.sandbox;
    const where = s.endpoint ? `, ${s.endpoint.host}:${s.endpoint.port}` : "";
    return `${s.user} ${s.role}: ${s.state} (slot ${s.slot}, generation ${s.generation}${where})\n`;
  });
}

/** Containers stop a few at a time, as a deploy starts them: each stop waits for its sandbox. */
const STOP_CONCURRENCY = 4;

/** Stops both sandboxes of `user`, or (no user) every running or starting one; one line each. */
async function stopMany(ctx: CommandContext, user: string | undefined): Promise<number> {
  const listed = await ctx.api.json<z.infer<typeof SandboxListResponse>>("GET", `/sandboxes${user ? `?user=${encodeURIComponent(user)}` : ""}`);
  const targets = listed.body.sandboxes.filter((s) => user !== undefined || s.state === "running" || s.state === "starting");
  const results: Array<{ user: string; role: string; ok: boolean; state?: string; error?: { code: string; message: string } }> = [];
  const width = Math.max(8, ...targets.map((s) => s.user.length));
  let next = 0;
  const worker = async () => {
    while (next < targets.length) {
      const s = targets[next++]!;
      try {
        const res = await ctx.api.json<z.infer<typeof SandboxResponse>>("POST", `/sandboxes/${encodeURIComponent(s.user)}/${s.role}/stop`);
        results.push({ user: s.user, role: s.role, ok: true, state: res.body.sandbox.state });
        if (!ctx.json) ctx.out(`✓ ${pad(s.user, width)}  ${s.role.padEnd(4)}  ${res.body.sandbox.state}\n`);
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        results.push({ user: s.user, role: s.role, ok: false, error: { code: err.code, message: err.message } });
        if (!ctx.json) ctx.out(`✗ ${pad(s.user, width)}  ${s.role.padEnd(4)}  ${err.code}: ${err.message}\n`);
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

const WATCH_EVERY_MS = 2000;

/**
 * With --watch: the command again every 2 s, each frame drawn whole over the last (ECMA-48
 * "cursor home" and "erase display"), until Ctrl-C. A failed round shows its error and the
 * watch goes on, so a daemon restart does not end it.
 */
async function watching(ctx: CommandContext, inv: Invocation, command: string, once: (ctx: CommandContext) => Promise<number>): Promise<number> {
  if (inv.options.watch !== true) return once(ctx);
  if (ctx.json) throw new UsageError("--watch does not apply to --json (a script can call the command in a loop)", command);
  for (;;) {
    let frame = "";
    const capture: CommandContext = { ...ctx, out: (text) => void (frame += text) };
    try {
      await once(capture);
    } catch (err) {
      if (!(err instanceof ApiError) && !(err instanceof ConnectionError)) throw err;
      frame += `error: ${err instanceof ApiError ? `${err.code}: ` : ""}${err.message}\n`;
    }
    ctx.out(`\x1b[H\x1b[2J${time(new Date().toISOString())}  hypervisorctl ${command}, every ${WATCH_EVERY_MS / 1000} s (Ctrl-C to stop)\n\n${frame}`);
    await sleep(WATCH_EVERY_MS);
  }
}

/** Why an audited call did not simply succeed, from what its details hold; "-" when it did. */
export function reason(e: z.infer<typeof AuditEntrySchema>): string {
  const d = (e.details ?? {}) as { code?: unknown; message?: unknown; reason?: unknown; status?: unknown; users?: unknown; failed?: unknown };
  if (typeof d.code === "string") return typeof d.message === "string" ? `${d.code}: ${d.message}` : d.code;
  if (typeof d.reason === "string") return typeof d.status === "number" ? `${d.reason} (${d.status})` : d.reason;
  if (Array.isArray(d.failed) && d.failed.length) {
    const who = (d.failed as Array<{ user?: unknown; code?: unknown }>).map((f) => `${String(f.user)} ${String(f.code)}`).join(", ");
    return `${d.failed.length} of ${String(d.users)} users failed: ${who}`;
  }
  return "-";
}

function hostLine(h: z.infer<typeof HostSchema>): string {
  return `${h.state}, ${h.users} users, capacity ${h.capacity}, ports on ${h.address} (${h.url})`;
}

// --- option helpers ----------------------------------------------------------------------------

function stringOption(inv: Invocation, name: string): string | undefined {
  const v = inv.options[name];
  return typeof v === "string" ? v : undefined;
}

export function positiveInt(value: string, what: string, command: string): number {
  if (!/^[1-9]\d{0,9}$/.test(value)) throw new UsageError(`${what} must be a positive integer, not '${value}'`, command);
  return Number(value);
}

function intOption(inv: Invocation, name: string, command: string): number | undefined {
  const v = stringOption(inv, name);
  return v === undefined ? undefined : positiveInt(v, `--${name}`, command);
}

function usersOption(inv: Invocation, command: string): string[] | undefined {
  const v = stringOption(inv, "users");
  if (v === undefined) return undefined;
  const users = v
    .split(",")
    .map((u) => u.trim())
    .filter(Boolean);
  if (!users.length) throw new UsageError("--users needs at least one user name (a,b,c)", command);
  return users;
}

import type { z } from "@hono/zod-openapi";
import type { AuditListResponse } from "../operator/audit-routes.js";
import type { DrainProgressLineSchema, DrainResultSchema, HostListResponse, HostResponse, HostSchema, MoveResultSchema } from "../operator/host-routes.js";
import type { GenerationListResponse, GenerationResponse, GenerationSchema } from "../operator/generation-routes.js";
import type { InviteListResponse, NewInviteSchema } from "../operator/invite-routes.js";
import type { ReleaseProgressLineSchema, ReleaseResultSchema, UserResultSchema } from "../operator/release-routes.js";
import type { SandboxListResponse, SandboxResponse } from "../operator/sandbox-routes.js";
import type { StatusSchema } from "../operator/status-routes.js";
import type { UserSchema } from "../operator/user-routes.js";
import { open, rm } from "node:fs/promises";
import { resolve } from "node:path";
import { clip, duration, fields, pad, table, time } from "./format.js";
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

export interface OptionSpec {
  name: string;
  /** As shown in help, e.g. `--users a,b`. */
  flag: string;
  help: string;
}

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

const USERS: OptionSpec = { name: "users", flag: "--users a,b", help: "only these users (comma-separated); default: every user" };

export const COMMANDS: Command[] = [
  {
    name: "status",
    usage: "status",
    summary: "daemon health, runtime and capacity",
    details: ["Exits 1 when the daemon is not ready (database or container runtime down)."],
    args: [0, 0],
    async run(ctx) {
      const res = await ctx.api.json<z.infer<typeof StatusSchema>>("GET", "/status");
      const s = res.body;
      const ready = s.ready.database && s.ready.runtime;
      if (ctx.json) ctx.out(`${res.raw}\n`);
      else {
        ctx.out(
          fields([
            ["runtime", s.runtime],
            ["uptime", duration(s.uptimeMs)],
            ["ready", `${ready ? "yes" : "NO"} (database ${s.ready.database ? "up" : "DOWN"}, runtime ${s.ready.runtime ? "up" : "DOWN"})`],
            ["users", String(s.users)],
            ["sandboxes", `${s.sandboxes.running} running of ${s.sandboxes.max} at most`],
          ]),
        );
      }
      return ready ? 0 : 1;
    },
  },
  {
    name: "sandboxes list",
    usage: "sandboxes [list] [--user USER]",
    summary: "every user's live and dev sandbox with its state",
    options: [{ name: "user", flag: "--user USER", help: "only this user's sandboxes" }],
    args: [0, 0],
    async run(ctx, inv) {
      const user = stringOption(inv, "user");
      return call<z.infer<typeof SandboxListResponse>>(ctx, "GET", `/sandboxes${user ? `?user=${encodeURIComponent(user)}` : ""}`, undefined, (res) => {
        const rows = res.body.sandboxes;
        if (!rows.length) return "no sandboxes: there are no users yet (hypervisorctl users add NAME)\n";
        return table(
          ["USER", "ROLE", "SLOT", "GEN", "STATE", "ENDPOINT", "STARTED"],
          rows.map((s) => [
            s.user,
            s.role,
            s.slot,
            String(s.generation),
            s.state,
            s.endpoint ? `${s.endpoint.host}:${s.endpoint.port}` : "-",
            time(s.startedAt),
          ]),
        );
      });
    },
  },
  ...(["start", "stop", "restart"] as const).map((action): Command => ({
    name: `sandboxes ${action}`,
    usage: `sandboxes ${action} USER ROLE`,
    summary: `${action} one user's live or dev sandbox${action === "stop" ? "" : " and wait until it is healthy"}`,
    details: ["ROLE is live or dev."],
    args: [2, 2],
    async run(ctx, inv) {
      const [user, role] = inv.args as [string, string];
      if (role !== "live" && role !== "dev") throw new UsageError(`ROLE must be live or dev, not '${role}'`, `sandboxes ${action}`);
      return call<z.infer<typeof SandboxResponse>>(ctx, "POST", `/sandboxes/${encodeURIComponent(user)}/${role}/${action}`, undefined, (res) => {
        const s = res.body.sandbox;
        const where = s.endpoint ? `, ${s.endpoint.host}:${s.endpoint.port}` : "";
        return `${s.user} ${s.role}: ${s.state} (slot ${s.slot}, generation ${s.generation}${where})\n`;
      });
    },
  })),
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
        ({ body: i }) => `invite ${i.id} created, valid until ${time(i.expiresAt)}; the code is shown only now:\n  ${i.code}\n`,
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
          ["AT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "DURATION", "SOURCE"],
          res.body.entries.map((e) => [
            time(e.at),
            e.actor,
            e.action,
            clip(e.target ?? "-", 40),
            e.outcome,
            e.durationMs === null ? "-" : duration(e.durationMs),
            e.source ?? "-",
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
  users: { summary: "provision users" },
  invites: { summary: "create and list invite codes" },
  generations: { summary: "list, add and mark generations", default: "list" },
  hosts: { summary: "list, add, cordon, drain and remove Podman hosts", default: "list" },
};

// --- deploy, swap, rollback ------------------------------------------------------------------

type ReleaseKind = "deploy" | "swap" | "rollback";

type ProgressLine = z.infer<typeof ReleaseProgressLineSchema>;
type UserResult = z.infer<typeof UserResultSchema>;
type Summary = Extract<ProgressLine, { type: "summary" }>;

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
    if (line.type === "result") {
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
async function call<T>(ctx: CommandContext, method: "GET" | "POST", path: string, body: unknown, render: (res: ApiResponse<T>) => string): Promise<number> {
  const res = await ctx.api.json<T>(method, path, body);
  ctx.out(ctx.json ? (res.raw.endsWith("\n") ? res.raw : `${res.raw}\n`) : render(res));
  return 0;
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

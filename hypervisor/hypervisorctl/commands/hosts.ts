import type { z } from "@hono/zod-openapi";
import type { HostListResponse, HostResponse, HostSchema, MoveResultSchema } from "../../operator/host-routes.js";
import { call, UsageError, type Command } from "../command.js";
import { clip, duration, table } from "../format.js";
import { followBatch, tally } from "../follow-batch.js";
import { intOption, stringOption } from "../options.js";
import { userPath } from "./users.js";

type MoveResult = z.infer<typeof MoveResultSchema>;

/** The hosts, and moving a user between them (the API's host routes). */
export const HOST_COMMANDS: Command[] = [
  {
    name: "users move",
    usage: "users move USER HOST",
    summary: "move a user's sandboxes and data to another host; on failure the user stays where they were",
    args: [2, 2],
    async run(ctx, inv) {
      const [user, host] = inv.args as [string, string];
      return call<MoveResult>(
        ctx,
        "POST",
        `${userPath(user)}/move`,
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
          ["NAME", "STATE", "USERS", "SANDBOXES", "CAPACITY", "ADDRESS", "URL", "EGRESS", "LAST ERROR"],
          res.body.hosts.map((h) => [
            h.name,
            h.state,
            String(h.users),
            h.sandboxes === null ? "?" : String(h.sandboxes),
            String(h.capacity),
            h.address,
            h.url,
            // A remote host's firewall holds its sandboxes, which the hypervisor cannot check: said so.
            h.egress ? `${h.egress.mode} (${h.egress.enforcedBy === "hypervisor" ? "here" : "host firewall"})` : "-",
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
        `${hostPath(inv.args[0]!)}/${action}`,
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
      return followBatch<MoveResult>(ctx, `${hostPath(inv.args[0]!)}/drain`, undefined, {
        name: "drain",
        width: 12,
        succeeded: (r) => [`${r.from ?? "?"}→${r.to ?? "?"}`, duration(r.durationMs)],
        summary: (s) => tally("drain", s, "moved"),
      });
    },
  },
  {
    name: "hosts remove",
    usage: "hosts remove NAME",
    summary: "remove a host that holds no user (drain it first)",
    args: [1, 1],
    async run(ctx, inv) {
      const name = inv.args[0]!;
      await ctx.api.json("DELETE", hostPath(name));
      ctx.out(ctx.json ? `{"removed":${JSON.stringify(name)}}\n` : `host ${name} removed\n`);
      return 0;
    },
  },
];

function hostPath(name: string): string {
  return `/hosts/${encodeURIComponent(name)}`;
}

function hostLine(h: z.infer<typeof HostSchema>): string {
  return `${h.state}, ${h.users} users, capacity ${h.capacity}, ports on ${h.address} (${h.url})`;
}

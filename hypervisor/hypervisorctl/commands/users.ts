import type { z } from "@hono/zod-openapi";
import type {
  SessionsRevokedResponse,
  UserChangeResponse,
  UserListResponse,
  UserPurgedResponse,
  UserRemovedResponse,
  UserSchema,
} from "../../operator/user-routes.js";
import { call, type Command } from "../command.js";
import { count, table, time } from "../format.js";
import { confirmQuery, flag, YES } from "../options.js";

export const USER_COMMANDS: Command[] = [
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
      return call<z.infer<typeof UserChangeResponse>>(ctx, "POST", `${userPath(inv.args[0]!)}/${action}`, undefined, ({ body }) =>
        action === "disable"
          ? `user ${body.user.name} disabled; ${count(body.revokedSessions, "session")} ended\n`
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
      "stays reserved until users purge deletes them. --purge deletes them too: it cannot be undone,",
      "so it asks for --yes and, without it, says what it would delete.",
    ],
    options: [{ name: "purge", flag: "--purge", help: "delete the user's sandbox data too (asks for --yes)" }, YES],
    args: [1, 1],
    async run(ctx, inv) {
      const purge = flag(inv, "purge");
      const query = [purge ? "purge=true" : "", purge ? confirmQuery(inv) : ""].filter(Boolean).join("&");
      return call<z.infer<typeof UserRemovedResponse>>(ctx, "DELETE", `${userPath(inv.args[0]!)}${query ? `?${query}` : ""}`, undefined, ({ body }) =>
        body.purged ? `user ${body.name} removed, with its data\n` : `user ${body.name} removed; its sandbox data is kept (--purge deletes it)\n`,
      );
    },
  },
  {
    name: "users purge",
    usage: "users purge USER",
    summary: "delete the data a removed user left behind, on every host, and free its name",
    details: ["It cannot be undone: without --yes it only says what it would delete."],
    options: [YES],
    args: [1, 1],
    async run(ctx, inv) {
      const query = confirmQuery(inv);
      return call<z.infer<typeof UserPurgedResponse>>(
        ctx,
        "POST",
        `${userPath(inv.args[0]!)}/purge${query ? `?${query}` : ""}`,
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
        `${userPath(inv.args[0]!)}/sessions/revoke`,
        undefined,
        ({ body }) => `${count(body.revokedSessions, "session")} of ${body.user} ended\n`,
      );
    },
  },
];

/** `/users/NAME`, the API's path of one user. */
export function userPath(user: string): string {
  return `/users/${encodeURIComponent(user)}`;
}

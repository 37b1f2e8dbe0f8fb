import type { z } from "@hono/zod-openapi";
import type { InviteListResponse, NewInviteSchema } from "../../operator/invite-routes.js";
import { call, type Command } from "../command.js";
import { table, time } from "../format.js";
import { intOption } from "../options.js";

/** An invite matters only under invite-only registration: said plainly when it is not that. */
const REGISTRATION_NOTES: Partial<Record<"open" | "invite" | "closed", string>> = {
  open: "note: registration is open (HYPERVISOR_REGISTRATION=open): anyone can sign up without an invite; this code matters only once it is 'invite'\n",
  closed: "note: registration is closed (HYPERVISOR_REGISTRATION=closed): no one can sign up, with or without this code, until it is 'invite'\n",
};

export const INVITE_COMMANDS: Command[] = [
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
          `send the invitee this link, which fills it in:\n  ${i.registerUrl}\n` +
          (REGISTRATION_NOTES[i.registration] ?? ""),
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
];

import { createRoute, z } from "@hono/zod-openapi";
import type { Services } from "../services.js";
import { audited } from "./audited.js";
import type { OperatorApp } from "./operator-env.js";
import { errorResponses } from "./schemas.js";

const HOUR_MS = 60 * 60 * 1000;
const DEFAULT_HOURS = 24 * 7;

export const NewInviteSchema = z
  .object({
    id: z.number(),
    code: z.string().openapi({ description: "shown once; only its hash is stored" }),
    expiresAt: z.string(),
    registerUrl: z.string().openapi({ description: "the public origin's /register page with the code filled in, to send to the invitee" }),
    registration: z.enum(["open", "invite", "closed"]).openapi({
      description: "HYPERVISOR_REGISTRATION now: an invite is needed only under `invite` (under `open` anyone may sign up, under `closed` no one)",
    }),
  })
  .openapi("NewInvite");

export const InviteSchema = z
  .object({
    id: z.number(),
    state: z.enum(["unused", "used", "expired"]),
    createdBy: z.string(),
    createdAt: z.string(),
    expiresAt: z.string(),
    usedAt: z.string().nullable(),
    usedBy: z.string().nullable(),
  })
  .openapi("Invite");

export const InviteListResponse = z.object({ invites: z.array(InviteSchema) });

const createInviteRoute = createRoute({
  method: "post",
  path: "/invites",
  summary: "Create a single-use invite code for HYPERVISOR_REGISTRATION=invite",
  request: {
    body: {
      required: false,
      content: {
        "application/json": {
          schema: z
            .object({
              expiresInHours: z
                .number()
                .int()
                .min(1)
                .max(24 * 90)
                .default(DEFAULT_HOURS),
            })
            .strict(),
        },
      },
    },
  },
  responses: {
    201: { description: "created", content: { "application/json": { schema: NewInviteSchema } } },
    ...errorResponses(400, 401, 404, 413, 503),
  },
});

const listInvitesRoute = createRoute({
  method: "get",
  path: "/invites",
  summary: "Every invite with its state (never the codes)",
  responses: {
    200: { description: "invites", content: { "application/json": { schema: InviteListResponse } } },
    ...errorResponses(401),
  },
});

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

export type InviteRouteDeps = Pick<Services, "invites" | "audit"> & { config: Pick<Services["config"], "publicOrigin" | "registration"> };

export function registerInviteRoutes(app: OperatorApp, { invites, audit, config }: InviteRouteDeps): void {
  app.openapi(createInviteRoute, async (c) => {
    // The body is optional: without one the validator hands over {}, so the default applies here too.
    const { expiresInHours = DEFAULT_HOURS } = c.req.valid("json");
    const invite = await audited(audit, c, "invite.create", "invites", async () => invites.create(c.get("actor"), expiresInHours * HOUR_MS));
    const registerUrl = new URL(`/register?invite=${encodeURIComponent(invite.code)}`, config.publicOrigin).toString();
    return c.json(
      { id: invite.id, code: invite.code, expiresAt: new Date(invite.expiresAt).toISOString(), registerUrl, registration: config.registration },
      201,
    );
  });

  app.openapi(listInvitesRoute, (c) => {
    const list = invites.list().map((i) => ({
      id: i.id,
      state: i.state,
      createdBy: i.createdBy,
      createdAt: iso(i.createdAt)!,
      expiresAt: iso(i.expiresAt)!,
      usedAt: iso(i.usedAt),
      usedBy: i.usedBy,
    }));
    return c.json({ invites: list }, 200);
  });
}

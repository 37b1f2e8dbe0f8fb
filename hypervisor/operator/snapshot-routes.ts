import { createRoute, z } from "@hono/zod-openapi";
import { Readable } from "node:stream";
import { HypervisorError, type ErrorCode } from "../errors.js";
import { UserName } from "../http/user-name.js";
import type { Services } from "../services.js";
import { SNAPSHOT_ID } from "../snapshots/snapshots.js";
import { audited } from "./audited.js";
import type { OperatorApp } from "./operator-env.js";
import { errorResponses } from "./schemas.js";

export const SnapshotSchema = z
  .object({
    id: z.string(),
    user: z.string(),
    slot: z.enum(["a", "b"]),
    generation: z.number(),
    reason: z.enum(["manual", "pre-promote", "pre-rollback", "pre-restore", "fork"]),
    method: z.enum(["btrfs", "reflink", "copy", "move"]),
    sizeBytes: z.number(),
    durationMs: z.number(),
    pinned: z.boolean(),
    createdAt: z.string(),
  })
  .openapi("Snapshot");
export const SnapshotListResponse = z.object({ snapshots: z.array(SnapshotSchema) });
export const SnapshotResponse = z.object({ snapshot: SnapshotSchema });
export const RestoreResponse = z.object({
  restored: SnapshotSchema,
  slot: z.enum(["a", "b"]),
  method: z.enum(["btrfs", "reflink", "copy", "move"]),
  /** The snapshot that keeps the data the restore replaced (none when the slot had none). */
  kept: SnapshotSchema.nullable(),
});

const SlotOrRole = z.enum(["a", "b", "live", "dev"]).openapi({ description: "a slot, or the role that names one now", example: "live" });
const SnapshotId = z.string().regex(SNAPSHOT_ID, "a snapshot id: 12 hex digits").openapi({ example: "3f2a9c01b7e4" });
const UserParam = z.object({ user: UserName });
const SnapshotParams = z.object({ user: UserName, id: SnapshotId });
const CreateBody = z.object({ slot: SlotOrRole }).strict();
const ForkBody = z.object({ from: z.literal("live").default("live"), to: z.literal("dev").default("dev") }).strict();
export const ForkResponse = z.object({
  user: z.string(),
  ok: z.boolean(),
  /** Dev: its slot and generation. */
  to: z.object({ slot: z.enum(["a", "b"]), generation: z.number() }).optional(),
  snapshot: z.string().optional().openapi({ description: "the snapshot of live's data dev now runs on" }),
  kept: z.string().optional().openapi({ description: "the snapshot that keeps dev's data from before" }),
  durationMs: z.number(),
});
const RestoreBody = z.object({ slot: SlotOrRole.optional() }).strict();

const listRoute = createRoute({
  method: "get",
  path: "/users/{user}/snapshots",
  summary: "A user's snapshots, newest first",
  request: { params: UserParam },
  responses: { 200: { description: "snapshots", content: { "application/json": { schema: SnapshotListResponse } } }, ...errorResponses(400, 401, 404) },
});
const createSnapshotRoute = createRoute({
  method: "post",
  path: "/users/{user}/snapshots",
  summary: "Snapshot a slot's data (the sandbox is held still while it is copied)",
  request: { params: UserParam, body: { required: true, content: { "application/json": { schema: CreateBody } } } },
  responses: {
    201: { description: "taken", content: { "application/json": { schema: SnapshotResponse } } },
    ...errorResponses(400, 401, 404, 409, 413, 503),
  },
});
const restoreRoute = createRoute({
  method: "post",
  path: "/users/{user}/snapshots/{id}/restore",
  summary: "Put a snapshot's data into a slot (its own by default); the data it replaces is kept as a pre-restore snapshot",
  request: { params: SnapshotParams, body: { required: true, content: { "application/json": { schema: RestoreBody } } } },
  responses: {
    200: { description: "restored", content: { "application/json": { schema: RestoreResponse } } },
    ...errorResponses(400, 401, 404, 409, 413, 503),
  },
});
const pinRoute = createRoute({
  method: "post",
  path: "/users/{user}/snapshots/{id}/{action}",
  summary: "Pin a snapshot (never pruned) or unpin it",
  request: { params: SnapshotParams.extend({ action: z.enum(["pin", "unpin"]) }) },
  responses: { 200: { description: "done", content: { "application/json": { schema: SnapshotResponse } } }, ...errorResponses(400, 401, 404) },
});
const deleteRoute = createRoute({
  method: "delete",
  path: "/users/{user}/snapshots/{id}",
  summary: "Delete a snapshot and its data",
  request: { params: SnapshotParams },
  responses: {
    200: { description: "deleted", content: { "application/json": { schema: z.object({ deleted: z.string() }) } } },
    ...errorResponses(400, 401, 404, 409),
  },
});
const exportRoute = createRoute({
  method: "get",
  path: "/users/{user}/snapshots/{id}/export",
  summary: "The snapshot's data as a tar stream (paths relative to /data)",
  request: { params: SnapshotParams },
  responses: {
    200: { description: "a tar archive", content: { "application/x-tar": { schema: z.string().openapi({ format: "binary" }) } } },
    ...errorResponses(400, 401, 404),
  },
});

const forkRoute = createRoute({
  method: "post",
  path: "/users/{user}/fork",
  summary: "Dev's data becomes a copy of live's (dev's own kept as a snapshot); live is held still only while it is copied",
  request: { params: UserParam, body: { required: true, content: { "application/json": { schema: ForkBody } } } },
  responses: {
    200: { description: "forked", content: { "application/json": { schema: ForkResponse } } },
    ...errorResponses(400, 401, 404, 409, 413, 503),
  },
});

export type SnapshotRouteDeps = Pick<Services, "snapshots" | "dataReleases" | "audit">;

export function registerSnapshotRoutes(app: OperatorApp, { snapshots, dataReleases, audit }: SnapshotRouteDeps): void {
  app.openapi(forkRoute, async (c) => {
    const { user } = c.req.valid("param");
    c.req.valid("json");
    const result = await audited(audit, c, "fork", `${user}/live→dev`, async () => {
      const r = await dataReleases.fork(user);
      if (!r.ok) throw new HypervisorError((r.error?.code ?? "internal") as ErrorCode, r.error?.message ?? "fork failed", { user });
      return r;
    });
    return c.json(result, 200);
  });

  app.openapi(listRoute, (c) => {
    const { user } = c.req.valid("param");
    return c.json({ snapshots: snapshots.list(user) }, 200);
  });

  app.openapi(createSnapshotRoute, async (c) => {
    const { user } = c.req.valid("param");
    const { slot } = c.req.valid("json");
    const snapshot = await audited(audit, c, "snapshot.create", `${user}/${slot}`, () => snapshots.create(user, slot));
    return c.json({ snapshot }, 201);
  });

  app.openapi(restoreRoute, async (c) => {
    const { user, id } = c.req.valid("param");
    // `{}` restores into the snapshot's own slot.
    const { slot } = c.req.valid("json");
    const outcome = await audited(
      audit,
      c,
      "snapshot.restore",
      `${user}/${id}`,
      () => snapshots.restore(user, id, slot),
      (r) => ({ outcome: "ok", details: { slot: r.slot, kept: r.kept?.id ?? null, method: r.method } }),
    );
    return c.json({ restored: outcome.restored, slot: outcome.slot, method: outcome.method, kept: outcome.kept ?? null }, 200);
  });

  app.openapi(pinRoute, async (c) => {
    const { user, id, action } = c.req.valid("param");
    const snapshot = await audited(audit, c, `snapshot.${action}`, `${user}/${id}`, async () => snapshots.setPinned(user, id, action === "pin"));
    return c.json({ snapshot }, 200);
  });

  app.openapi(deleteRoute, async (c) => {
    const { user, id } = c.req.valid("param");
    await audited(audit, c, "snapshot.delete", `${user}/${id}`, () => snapshots.delete(user, id));
    return c.json({ deleted: id }, 200);
  });

  app.openapi(exportRoute, async (c) => {
    const { user, id } = c.req.valid("param");
    const tar = await audited(audit, c, "snapshot.export", `${user}/${id}`, () => snapshots.export(user, id));
    return new Response(Readable.toWeb(tar) as ReadableStream<Uint8Array>, {
      status: 200,
      headers: {
        "content-type": "application/x-tar",
        "content-disposition": `attachment; filename="${user}-${id}.tar"`,
        "cache-control": "no-store",
        "x-content-type-options": "nosniff",
      },
    }) as never;
  });
}

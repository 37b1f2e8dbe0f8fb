import type { Context, Hono } from "hono";
import { Readable } from "node:stream";
import { z } from "zod";
import { StepUp } from "../auth/auth-routes.js";
import { requireScope } from "../auth/auth-service.js";
import type { StepUpAction } from "../auth/challenge-store.js";
import { clientAddress, readJson, requireSameOrigin } from "../auth/request-context.js";
import type { Config } from "../config.js";
import { asHypervisorError, HypervisorError } from "../errors.js";
import type { AppEnv } from "../http/error-handling.js";
import { UserName } from "../http/user-name.js";
import type { Services } from "../services.js";

export const ACCOUNT_SNAPSHOTS_PATH = "/_hv/snapshots";
export const ACCOUNT_DATA_PATH = "/_hv/data";

const Confirmed = z.object({ stepUp: StepUp }).strict();
const SNAPSHOT_ID = /^[0-9a-f]{12}$/;

export type AccountDataDeps = Pick<Services, "sessions" | "auth" | "snapshots" | "dataReleases" | "audit"> & {
  config: Pick<Config, "publicOrigin" | "trustedProxies">;
};

/**
 * A user's own data from the account page (DESIGN §2a): their snapshots (list, download, restore,
 * delete) and promote, rollback with data and fork. A full session only, the path's user must be
 * the session's (another user's snapshots are never listed, restored, exported or deleted), state
 * changes from the public origin only, each change confirmed with a fresh passkey step-up made for
 * it, and audited.
 */
export function registerAccountDataRoutes(app: Hono<AppEnv>, deps: AccountDataDeps): void {
  const { sessions, auth, snapshots, dataReleases, audit, config } = deps;
  for (const base of [ACCOUNT_SNAPSHOTS_PATH, ACCOUNT_DATA_PATH]) {
    app.use(`${base}/*`, async function noStore(c, next) {
      await next();
      c.header("Cache-Control", "no-store");
    });
    app.use(`${base}/*`, requireSameOrigin(config.publicOrigin));
  }

  /** The session's user, once the path names that very user. */
  const own = (c: Context<AppEnv>): string => {
    const session = sessions.authenticate(c.req.header("cookie"));
    requireScope(session, "full");
    const user = c.req.param("user") ?? "";
    if (!UserName.safeParse(user).success) throw new HypervisorError("validation_failed", "user: a user name");
    if (user !== session.user) throw new HypervisorError("forbidden", "you can only see and change your own data");
    return user;
  };
  const snapshotId = (c: Context<AppEnv>): string => {
    const id = c.req.param("id") ?? "";
    if (!SNAPSHOT_ID.test(id)) throw new HypervisorError("validation_failed", "id: a snapshot id");
    return id;
  };

  /** Runs a confirmed change and audits it, refused or not, under the user's name. */
  const confirmed = async <T>(c: Context<AppEnv>, user: string, stepUpAction: StepUpAction, target: string, run: () => Promise<T>): Promise<T> => {
    const began = Date.now();
    const entry = { actor: `user:${user}`, action: stepUpAction, target, source: clientAddress(c, config.trustedProxies) };
    try {
      const { stepUp } = await readJson(c, Confirmed);
      await auth.confirmStepUp(sessions.authenticate(c.req.header("cookie")), stepUpAction, stepUp);
      const result = await run();
      audit.record({ ...entry, outcome: "ok", durationMs: Date.now() - began, details: { requestId: c.get("requestId") } });
      return result;
    } catch (err) {
      const e = asHypervisorError(err);
      audit.record({
        ...entry,
        outcome: e.status >= 500 ? "error" : "refused",
        durationMs: Date.now() - began,
        details: { code: e.code, message: e.message.slice(0, 300), requestId: c.get("requestId") },
      });
      throw err;
    }
  };
  /** A batch's one result as the page's answer: its failure as an error (a backed-out promote says so). */
  const sole = <R extends { ok: boolean; error?: { code: string; message: string } }>(r: R): R => {
    if (!r.ok) throw new HypervisorError((r.error?.code ?? "internal") as never, r.error?.message ?? "failed", { result: r });
    return r;
  };

  app.get(`${ACCOUNT_SNAPSHOTS_PATH}/:user`, (c) => c.json({ snapshots: snapshots.list(own(c)) }, 200));

  app.get(`${ACCOUNT_SNAPSHOTS_PATH}/:user/:id/export`, async (c) => {
    const user = own(c);
    const id = snapshotId(c);
    const tar = await snapshots.export(user, id);
    audit.record({ actor: `user:${user}`, action: "snapshot.export", target: `${user}/${id}`, source: clientAddress(c, config.trustedProxies), outcome: "ok" });
    return new Response(Readable.toWeb(tar) as ReadableStream<Uint8Array>, {
      status: 200,
      headers: {
        "content-type": "application/x-tar",
        "content-disposition": `attachment; filename="${user}-${id}.tar"`,
        "cache-control": "no-store",
        "x-content-type-options": "nosniff",
      },
    });
  });

  app.post(`${ACCOUNT_SNAPSHOTS_PATH}/:user/:id/restore`, async (c) => {
    const user = own(c);
    const id = snapshotId(c);
    const done = await confirmed(c, user, "snapshot.restore", `${user}/${id}`, () => snapshots.restore(user, id));
    return c.json({ restored: done.restored, slot: done.slot, kept: done.kept ?? null }, 200);
  });

  app.delete(`${ACCOUNT_SNAPSHOTS_PATH}/:user/:id`, async (c) => {
    const user = own(c);
    const id = snapshotId(c);
    await confirmed(c, user, "snapshot.delete", `${user}/${id}`, () => snapshots.delete(user, id));
    return c.json({ deleted: id }, 200);
  });

  app.post(`${ACCOUNT_DATA_PATH}/:user/:action`, async (c) => {
    const user = own(c);
    const action = c.req.param("action");
    if (action === "promote") {
      const [r] = await confirmed(c, user, "data.promote", user, async () => [sole((await dataReleases.promote([user]))[0]!)]);
      return c.json({ result: r }, 200);
    }
    if (action === "rollback") {
      const [r] = await confirmed(c, user, "data.rollback", user, async () => [sole((await dataReleases.rollback([user], undefined))[0]!)]);
      return c.json({ result: r }, 200);
    }
    if (action === "fork") {
      const r = await confirmed(c, user, "data.fork", user, async () => sole(await dataReleases.fork(user)));
      return c.json({ result: r }, 200);
    }
    throw new HypervisorError("not_found", "actions: promote, rollback, fork");
  });
}

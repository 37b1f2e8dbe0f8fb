import { createRoute, z } from "@hono/zod-openapi";
import { once } from "node:events";
import { createReadStream } from "node:fs";
import { rm, stat } from "node:fs/promises";
import { Readable } from "node:stream";
import type { Config } from "../config.js";
import { copyDatabase, schemaVersion } from "../db/backup.js";
import type { Services } from "../services.js";
import { audited } from "./audited.js";
import type { OperatorApp } from "./operator-env.js";
import { errorResponses } from "./schemas.js";

const SQLITE_MEDIA_TYPE = "application/vnd.sqlite3";

const backupRoute = createRoute({
  method: "post",
  path: "/backup",
  summary:
    "A consistent copy of the state database (SQLite online backup), sent as the response body: the caller writes it where it wants; the daemon keeps no copy",
  responses: {
    200: {
      description: "the SQLite database file; X-Hypervisor-Schema-Version says which schema it holds (which builds can open it)",
      headers: z.object({ "x-hypervisor-schema-version": z.string().openapi({ example: "2" }) }),
      content: { [SQLITE_MEDIA_TYPE]: { schema: z.string().openapi({ format: "binary" }) } },
    },
    ...errorResponses(401),
  },
});

export type BackupRouteDeps = Pick<Services, "db" | "audit"> & { config: Pick<Config, "stateDir"> };

export function registerBackupRoutes(app: OperatorApp, { db, audit, config }: BackupRouteDeps): void {
  app.openapi(backupRoute, async (c) => {
    const copy = await audited(
      audit,
      c,
      "database.backup",
      "hypervisor.db",
      async () => {
        const path = await copyDatabase(db, config.stateDir);
        return { path, bytes: (await stat(path)).size };
      },
      ({ bytes }) => ({ outcome: "ok", details: { bytes } }),
    );
    const file = createReadStream(copy.path);
    // Unlinked as soon as it is open: the copy lives only as long as this response reads it.
    await once(file, "open");
    await rm(copy.path);
    const headers = {
      "content-type": SQLITE_MEDIA_TYPE,
      "content-length": String(copy.bytes),
      "x-hypervisor-schema-version": String(schemaVersion(db)),
      "cache-control": "no-store",
    };
    return c.body(Readable.toWeb(file) as ReadableStream, 200, headers) as never;
  });
}

import type { z } from "@hono/zod-openapi";
import { open, rm } from "node:fs/promises";
import { resolve } from "node:path";
import type { ForkResponse, RestoreResponse, SnapshotListResponse, SnapshotResponse, SnapshotSchema } from "../../operator/snapshot-routes.js";
import { call, UsageError, type Command } from "../command.js";
import { duration, table, time } from "../format.js";
import { ConnectionError } from "../operator-connection.js";
import { userPath } from "./users.js";

type Snapshot = z.infer<typeof SnapshotSchema>;

const SLOTS = ["a", "b", "live", "dev"];

function slotArg(value: string, command: string): string {
  if (!SLOTS.includes(value)) throw new UsageError(`${command}: SLOT is a, b, live or dev, not ${JSON.stringify(value)}`, command);
  return value;
}

const snapshotPath = (user: string, id: string) => `${userPath(user)}/snapshots/${encodeURIComponent(id)}`;

/** 1.5 MiB, 12 KiB, 300 B: sizes as a person reads them. */
export function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

const describe = (s: Snapshot) => `snapshot ${s.id} of ${s.user}'s slot ${s.slot} (${s.reason}, gen ${s.generation}, ${bytes(s.sizeBytes)}, ${s.method})`;

/** Snapshots of a user's slot data (DESIGN §2a), as the API's snapshot routes have them. */
export const SNAPSHOT_COMMANDS: Command[] = [
  {
    name: "fork",
    usage: "fork USER",
    summary: "dev's data becomes a copy of live's (dev's own kept as a snapshot), so dev tries its generation on real data",
    args: [1, 1],
    async run(ctx, inv) {
      const user = inv.args[0]!;
      return call<z.infer<typeof ForkResponse>>(
        ctx,
        "POST",
        `${userPath(user)}/fork`,
        { from: "live", to: "dev" },
        ({ body }) =>
          `${user}'s dev (slot ${body.to?.slot ?? "?"}, gen ${body.to?.generation ?? "?"}) runs on a copy of live's data: snapshot ${body.snapshot ?? "?"}` +
          (body.kept ? `; dev's data from before is snapshot ${body.kept}` : "") +
          ` (${duration(body.durationMs)})\n`,
      );
    },
  },
  {
    name: "snapshots list",
    usage: "snapshots list USER",
    summary: "a user's snapshots, newest first: slot, reason, generation, size, method and copy time",
    args: [1, 1],
    async run(ctx, inv) {
      const user = inv.args[0]!;
      return call<z.infer<typeof SnapshotListResponse>>(ctx, "GET", `${userPath(user)}/snapshots`, undefined, ({ body }) => {
        if (!body.snapshots.length) return `${user} has no snapshots (hypervisorctl snapshots create ${user} live)\n`;
        return table(
          ["ID", "SLOT", "REASON", "GEN", "SIZE", "METHOD", "COPY", "PINNED", "TAKEN"],
          body.snapshots.map((s) => [
            s.id,
            s.slot,
            s.reason,
            String(s.generation),
            bytes(s.sizeBytes),
            s.method,
            duration(s.durationMs),
            s.pinned ? "pinned" : "-",
            time(s.createdAt),
          ]),
        );
      });
    },
  },
  {
    name: "snapshots create",
    usage: "snapshots create USER SLOT",
    summary: "snapshot a slot's data (SLOT: a, b, live or dev); its requests wait while the copy is made",
    args: [2, 2],
    async run(ctx, inv) {
      const [user, slot] = inv.args as [string, string];
      return call<z.infer<typeof SnapshotResponse>>(
        ctx,
        "POST",
        `${userPath(user)}/snapshots`,
        { slot: slotArg(slot, "snapshots create") },
        ({ body }) => `${describe(body.snapshot)} taken in ${duration(body.snapshot.durationMs)}\n`,
      );
    },
  },
  {
    name: "snapshots restore",
    usage: "snapshots restore USER ID [SLOT]",
    summary: "put a snapshot's data into a slot (its own by default); the data it replaces is kept as a snapshot",
    args: [2, 3],
    async run(ctx, inv) {
      const [user, id, slot] = inv.args as [string, string, string | undefined];
      return call<z.infer<typeof RestoreResponse>>(
        ctx,
        "POST",
        `${snapshotPath(user, id)}/restore`,
        slot ? { slot: slotArg(slot, "snapshots restore") } : {},
        ({ body }) =>
          `snapshot ${body.restored.id} restored into ${user}'s slot ${body.slot} (${body.method})` +
          (body.kept ? `; the data it replaced is snapshot ${body.kept.id}\n` : "; the slot had no data before\n"),
      );
    },
  },
  ...(["pin", "unpin"] as const).map((action): Command => ({
    name: `snapshots ${action}`,
    usage: `snapshots ${action} USER ID`,
    summary: action === "pin" ? "keep a snapshot until it is unpinned (never pruned)" : "let a snapshot be pruned again",
    args: [2, 2],
    async run(ctx, inv) {
      const [user, id] = inv.args as [string, string];
      return call<z.infer<typeof SnapshotResponse>>(
        ctx,
        "POST",
        `${snapshotPath(user, id)}/${action}`,
        undefined,
        ({ body }) => `${describe(body.snapshot)} ${action}ned\n`,
      );
    },
  })),
  {
    name: "snapshots delete",
    usage: "snapshots delete USER ID",
    summary: "delete a snapshot and its data",
    args: [2, 2],
    async run(ctx, inv) {
      const [user, id] = inv.args as [string, string];
      return call<{ deleted: string }>(ctx, "DELETE", snapshotPath(user, id), undefined, () => `snapshot ${id} of ${user} deleted\n`);
    },
  },
  {
    name: "snapshots export",
    usage: "snapshots export USER ID FILE",
    summary: "write a snapshot's data as a tar archive to FILE (a new file, mode 0600), or to stdout with -",
    args: [3, 3],
    async run(ctx, inv) {
      const [user, id, target] = inv.args as [string, string, string];
      const path = `${snapshotPath(user, id)}/export`;
      if (target === "-") {
        if (process.stdout.isTTY)
          throw new UsageError("snapshots export: refusing to write a tar archive to a terminal; give a FILE or redirect stdout", "snapshots export");
        await ctx.api.download(path, "application/x-tar", process.stdout, "GET");
        return 0;
      }
      const file = resolve(target);
      let handle;
      try {
        handle = await open(file, "wx", 0o600);
      } catch (err) {
        throw new ConnectionError(`cannot create ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      try {
        await ctx.api.download(path, "application/x-tar", handle.createWriteStream(), "GET");
      } catch (err) {
        await handle.close().catch(() => undefined);
        await rm(file, { force: true });
        throw err;
      }
      if (ctx.json) ctx.out(`${JSON.stringify({ file, user, id })}\n`);
      else ctx.out(`snapshot ${id} of ${user} written to ${file}\n`);
      return 0;
    },
  },
];

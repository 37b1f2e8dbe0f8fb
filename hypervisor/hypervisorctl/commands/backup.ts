import { open, rm } from "node:fs/promises";
import { resolve } from "node:path";
import { UsageError, type Command } from "../command.js";
import { ConnectionError } from "../operator-connection.js";

export const BACKUP_COMMANDS: Command[] = [
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
        const code = (err as NodeJS.ErrnoException).code;
        // Never over an earlier copy: it may be the one an upgrade falls back on.
        if (code === "EEXIST")
          throw new UsageError(`${file} already exists: a backup is written to a new file only, so name another (or move that one away)`, "backup");
        throw new ConnectionError(`cannot create ${file}: ${code ?? (err as Error).message}`);
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

import Database from "better-sqlite3";
import { randomBytes } from "node:crypto";
import { closeSync, fsyncSync, openSync, readdirSync, renameSync, rmSync, statSync } from "node:fs";
import { basename, dirname, join } from "node:path";

/** database.ts's Db, spelled out: that module imports this one. */
type Db = Database.Database;

/** `hypervisor.db.pre-3`: the database as it was before this daemon migrated it to schema version 3 (DESIGN §7a). */
export function preMigrationPath(dbPath: string, version: number): string {
  return `${dbPath}.pre-${version}`;
}

/** The schema version a database records (0: none yet). */
export function schemaVersion(db: Db): number {
  const row = db.prepare("SELECT version FROM schema_version").get() as { version: number } | undefined;
  return row?.version ?? 0;
}

/** A new file of ours, mode 0600 from its first byte (SQLite would create it 0644 less the umask). */
function privateFile(beside: string): string {
  const path = `${beside}.partial-${randomBytes(4).toString("hex")}`;
  closeSync(openSync(path, "wx", 0o600));
  return path;
}

function fsyncPath(path: string): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes a consistent copy of the open database to `path` (mode 0600), durably, before a
 * migration changes the original: VACUUM INTO copies within one read transaction, so the copy is
 * one moment of the database. It is written beside `path` and renamed once whole and on disk
 * (VACUUM INTO itself does not fsync), so a crash never leaves a half copy under the final name.
 * It blocks this connection while it runs: fine before the daemon serves, not while it does.
 */
export function copyDatabaseSync(db: Db, path: string): void {
  const partial = privateFile(path);
  try {
    db.prepare("VACUUM INTO ?").run(partial);
    fsyncPath(partial);
    renameSync(partial, path);
    fsyncPath(dirname(path));
  } catch (err) {
    rmSync(partial, { force: true });
    throw err;
  }
}

/**
 * A consistent copy of the open database in a private file of the state directory, made with
 * SQLite's online backup API, which copies in steps and lets the daemon serve in between. The
 * caller owns the file (and removes it).
 */
export async function copyDatabase(db: Db, stateDir: string): Promise<string> {
  const partial = privateFile(join(stateDir, "hypervisor.db.backup"));
  try {
    await db.backup(partial);
    return partial;
  } catch (err) {
    rmSync(partial, { force: true });
    throw err;
  }
}

/**
 * The pre-migration copy an older build should go back to: the one holding its own schema version
 * (else the newest older one), the most recent of those. Unreadable files are passed over.
 */
export function copyForSchema(dbPath: string, known: number): { path: string; version: number } | undefined {
  const prefix = `${basename(dbPath)}.pre-`;
  const candidates = readdirSync(dirname(dbPath))
    .filter((name) => name.startsWith(prefix) && /^\d+$/.test(name.slice(prefix.length)))
    .flatMap((name) => {
      const path = join(dirname(dbPath), name);
      try {
        const copy = new Database(path, { readonly: true, fileMustExist: true });
        try {
          return [{ path, version: schemaVersion(copy), mtime: statSync(path).mtimeMs }];
        } finally {
          copy.close();
        }
      } catch {
        return [];
      }
    })
    .filter((c) => c.version > 0 && c.version <= known)
    .sort((a, b) => b.version - a.version || b.mtime - a.mtime);
  return candidates[0] && { path: candidates[0].path, version: candidates[0].version };
}

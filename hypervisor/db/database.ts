import Database from "better-sqlite3";
import { chmodSync, closeSync, existsSync, mkdirSync, openSync } from "node:fs";
import { dirname } from "node:path";
import { copyDatabaseSync, copyForSchema, preMigrationPath, schemaVersion } from "./backup.js";
import { migrations } from "./migrations.js";

export type Db = Database.Database;

/**
 * Opens (creating if needed) the state database in WAL mode and brings its schema up to date,
 * copying it first when there is a migration to apply. `known` is the schema history this build
 * has (tests pass a shorter one to play an older build).
 */
export function openDatabase(path: string, known: readonly string[] = migrations): Db {
  if (path !== ":memory:") {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    // Created 0600 before SQLite opens it, instead of 0644 from the umask: it holds session and
    // recovery-code hashes and this install's secrets.
    closeSync(openSync(path, "a", 0o600));
    ownerOnly(path);
  }
  const db = new Database(path);
  db.pragma("journal_mode = WAL");
  if (path !== ":memory:") ownerOnly(path);
  // FULL (not NORMAL) so an acknowledged route flip survives power loss, not just a crash.
  db.pragma("synchronous = FULL");
  db.pragma("foreign_keys = ON");
  db.pragma("busy_timeout = 5000");
  migrate(db, path, known);
  return db;
}

/**
 * The database and its WAL and shared-memory files, owner only: files an older version made
 * 0644 are corrected. New -wal and -shm files get the database file's mode from SQLite itself
 * (os_unix.c, findCreateFileMode()).
 */
function ownerOnly(path: string): void {
  for (const file of [path, `${path}-wal`, `${path}-shm`]) if (existsSync(file)) chmodSync(file, 0o600);
}

function migrate(db: Db, path: string, known: readonly string[]): void {
  db.exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)");
  const current = schemaVersion(db);
  if (current > known.length) {
    db.close();
    throw new Error(newerSchema(path, current, known.length));
  }
  if (current === known.length) return;
  // A new database has nothing to keep; an existing one is copied, so the build it came from can go back to it.
  if (current > 0) copyDatabaseSync(db, preMigrationPath(path, known.length));
  db.transaction(() => {
    for (let v = current; v < known.length; v++) db.exec(known[v]!);
    db.prepare("DELETE FROM schema_version").run();
    db.prepare("INSERT INTO schema_version (version) VALUES (?)").run(known.length);
  })();
}

/** Says which copy to restore to run this (older) build again (deploy/RUNBOOK.md, "Rolling back an upgrade"). */
function newerSchema(path: string, found: number, known: number): string {
  const copy = copyForSchema(path, known);
  const what = `state database ${path} has schema version ${found}, newer than this build knows (${known}): a newer hypervisor migrated it`;
  if (!copy) {
    return `${what}. Run that version; no copy of schema ${known} or older lies beside the database, so going back needs one made with \`hypervisorctl backup\` before the upgrade`;
  }
  return `${what}. Run that version, or go back to this one with the copy taken before the upgrade: stop the daemon, restore ${copy.path} (schema ${copy.version}) as ${path}, remove ${path}-wal and ${path}-shm, start again (deploy/RUNBOOK.md, "Rolling back an upgrade")`;
}

/** A cheap round trip that fails when the database file is gone or unwritable. */
export function checkDatabase(db: Db): void {
  db.prepare("SELECT 1").get();
}

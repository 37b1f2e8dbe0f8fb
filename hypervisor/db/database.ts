import Database from "better-sqlite3";
import { chmodSync, closeSync, existsSync, mkdirSync, openSync } from "node:fs";
import { dirname } from "node:path";
import { migrations } from "./migrations.js";

export type Db = Database.Database;

/** Opens (creating if needed) the state database in WAL mode and brings its schema up to date. */
export function openDatabase(path: string): Db {
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
  migrate(db);
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

function migrate(db: Db): void {
  db.exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)");
  const row = db.prepare("SELECT version FROM schema_version").get() as { version: number } | undefined;
  const current = row?.version ?? 0;
  if (current > migrations.length) {
    throw new Error(`state database schema version ${current} is newer than this build knows (${migrations.length})`);
  }
  const apply = db.transaction(() => {
    for (let v = current; v < migrations.length; v++) db.exec(migrations[v]!);
    db.prepare("DELETE FROM schema_version").run();
    db.prepare("INSERT INTO schema_version (version) VALUES (?)").run(migrations.length);
  });
  if (current < migrations.length) apply();
}

/** A cheap round trip that fails when the database file is gone or unwritable. */
export function checkDatabase(db: Db): void {
  db.prepare("SELECT 1").get();
}

// The upgrade and rollback of DESIGN §7a, rehearsed on a real database file and the real daemon.
// What is played rather than run: "the previous build" is this build's openDatabase() with the
// migration list cut to its previous length, i.e. the previous schema and its version check;
// the previous build's other code is not run.
import assert from "node:assert/strict";
import Database from "better-sqlite3";
import { copyFileSync, existsSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { schemaVersion } from "../../hypervisor/db/backup.js";
import { openDatabase, type Db } from "../../hypervisor/db/database.js";
import { migrations } from "../../hypervisor/db/migrations.js";
import { daemonEnv, spawnDaemon, tempDir } from "../helpers/daemon.js";
import { testUser } from "../helpers/run-id.js";

const previous = migrations.slice(0, -1);
const N = migrations.length;

/** Every table's schema and rows, in a stable order: what "the same database" means here. */
function contentOf(db: Db): Record<string, unknown> {
  const tables = db.prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string; sql: string }[];
  return Object.fromEntries(tables.map((t) => [t.name, { sql: t.sql, rows: db.prepare(`SELECT * FROM "${t.name}" ORDER BY rowid`).all() }]));
}

function contentOfFile(path: string): Record<string, unknown> {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    return contentOf(db);
  } finally {
    db.close();
  }
}

describe(`upgrading the state database from schema ${N - 1} to ${N}, and back`, () => {
  const state = tempDir();
  after(() => state.remove());
  const dbPath = join(state.path, "hypervisor.db");
  const copyPath = `${dbPath}.pre-${N}`;
  const user = testUser("upgrade");

  it("copies the database before migrating it, and the previous build starts again on that copy", async () => {
    // A database as the previous build leaves it: its schema, written with its tables only.
    const old = openDatabase(dbPath, previous);
    const at = Date.now();
    old
      .prepare("INSERT INTO generations (runtime, command, version, state, created_at, state_changed_at) VALUES ('process', ?, '1', 'known-good', ?, ?)")
      .run(JSON.stringify(["/bin/false"]), at, at);
    old.prepare("INSERT INTO users (name, created_at) VALUES (?, ?)").run(user, at);
    old.prepare("INSERT INTO routes (user, live_slot, version, updated_at) VALUES (?, 'b', 3, ?)").run(user, at);
    for (const slot of ["a", "b"]) old.prepare("INSERT INTO sandboxes (user, slot, generation_id, generation_since) VALUES (?, ?, 1, ?)").run(user, slot, at);
    old.prepare("INSERT INTO audit (at, actor, action, target, outcome) VALUES (?, 'operator:unix', 'user.create', ?, 'ok')").run(at, user);
    const before = contentOf(old);
    old.close();

    // The new build: it copies, migrates and serves the old data.
    const upgraded = await spawnDaemon(daemonEnv(state.path));
    try {
      const sandboxes = await upgraded.operator.get<{ sandboxes: { role: string; slot: string; generation: number }[] }>(`/sandboxes?user=${user}`);
      assert.equal(sandboxes.status, 200, JSON.stringify(sandboxes.body));
      assert.deepEqual(
        sandboxes.body.sandboxes.map((s) => [s.role, s.slot, s.generation]),
        [
          ["live", "b", 1],
          ["dev", "a", 1],
        ],
      );
    } finally {
      assert.equal(await upgraded.kill("SIGTERM"), 0);
    }
    assert.ok(existsSync(copyPath), `${copyPath} was written`);
    assert.equal(statSync(copyPath).mode & 0o777, 0o600, "readable by the daemon's user only");
    assert.deepEqual(contentOfFile(copyPath), before, "the copy is the database as it was before the migration");

    // The previous build refuses the migrated database and says which copy to go back to.
    assert.throws(
      () => openDatabase(dbPath, previous),
      (err: Error) =>
        err.message.includes(`schema version ${N}, newer than this build knows (${N - 1})`) && err.message.includes(`restore ${copyPath} (schema ${N - 1})`),
    );

    // Rolling back as the runbook says: the copy in place of the database, its WAL files gone.
    for (const suffix of ["", "-wal", "-shm"]) rmSync(`${dbPath}${suffix}`, { force: true });
    copyFileSync(copyPath, dbPath);
    const back = openDatabase(dbPath, previous);
    try {
      assert.equal(schemaVersion(back), N - 1);
      assert.deepEqual(contentOf(back), before, "the previous build finds its data as it left it");
    } finally {
      back.close();
    }

    // And the upgrade can be made again.
    const again = await spawnDaemon(daemonEnv(state.path));
    try {
      assert.equal((await again.operator.get("/status")).body.users, 1);
    } finally {
      await again.kill("SIGTERM");
    }
  });

  it("leaves a new database without a copy: there was nothing to keep", () => {
    const fresh = tempDir();
    try {
      openDatabase(join(fresh.path, "hypervisor.db")).close();
      assert.ok(!existsSync(join(fresh.path, `hypervisor.db.pre-${N}`)));
    } finally {
      fresh.remove();
    }
  });

  it("names no copy when none holds an older schema, and says how to make one next time", () => {
    const alone = tempDir();
    try {
      const path = join(alone.path, "hypervisor.db");
      openDatabase(path).close();
      assert.throws(() => openDatabase(path, previous), /no copy of schema \d+ or older lies beside the database.*hypervisorctl backup/);
    } finally {
      alone.remove();
    }
  });
});

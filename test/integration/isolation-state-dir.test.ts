import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { ConfigError } from "../../hypervisor/config.js";
import { bootDaemon, daemonEnv, tempDir } from "../helpers/daemon.js";
import { repoRoot } from "../helpers/paths.js";

/** Boots on `stateDir` expecting a refusal; a daemon that starts anyway is closed, not left running. */
async function refusal(stateDir: string): Promise<unknown> {
  try {
    await (await bootDaemon({ stateDir })).close();
  } catch (err) {
    return err;
  }
  return assert.fail(`the daemon started on ${stateDir}`);
}

const modeOf = (path: string) => (statSync(path).mode & 0o777).toString(8).padStart(4, "0");
const dbFiles = (dir: string) => ["hypervisor.db", "hypervisor.db-wal", "hypervisor.db-shm"].map((f) => join(dir, f));

/** The state directory and database are the daemon's alone (DESIGN §5a), whatever was there before. */
describe("state directory and database file modes", () => {
  it("creates the database and its -wal and -shm files 0600 in a 0700 directory", async () => {
    const dir = tempDir();
    const stateDir = join(dir.path, "state");
    try {
      const t = await bootDaemon({ stateDir });
      try {
        assert.equal(modeOf(stateDir), "0700");
        for (const file of dbFiles(stateDir)) assert.equal(modeOf(file), "0600", file);
      } finally {
        await t.close();
      }
    } finally {
      dir.remove();
    }
  });

  it("closes an existing 0755 state directory and 0644 database files to group and others", async () => {
    const dir = tempDir();
    try {
      await (await bootDaemon({ stateDir: dir.path })).close();
      chmodSync(dir.path, 0o755);
      // SQLite removes -wal and -shm on a clean close; an older version's crash leaves them.
      for (const file of dbFiles(dir.path)) writeFileSync(file, "", { flag: "a", mode: 0o644 });
      for (const file of dbFiles(dir.path)) chmodSync(file, 0o644);
      const t = await bootDaemon({ stateDir: dir.path });
      try {
        assert.equal(modeOf(dir.path), "0700");
        for (const file of dbFiles(dir.path)) assert.equal(modeOf(file), "0600", file);
      } finally {
        await t.close();
      }
    } finally {
      dir.remove();
    }
  });

  it("refuses a state directory that group or others can write to, naming HYPERVISOR_STATE_DIR", async () => {
    for (const mode of [0o777, 0o770, 0o702]) {
      const dir = tempDir();
      try {
        chmodSync(dir.path, mode);
        const err = await refusal(dir.path);
        assert.ok(
          err instanceof ConfigError && err.variable === "HYPERVISOR_STATE_DIR" && err.message.includes(dir.path),
          `${mode.toString(8)}: ${String(err)}`,
        );
        assert.equal(modeOf(dir.path), mode.toString(8).padStart(4, "0"), "left as it was, for the operator to look at");
      } finally {
        dir.remove();
      }
    }
  });

  it("refuses a state directory owned by another user", async (t) => {
    if (process.getuid?.() !== 0) return t.skip("needs root to give the directory away");
    const dir = tempDir();
    try {
      const stateDir = join(dir.path, "state");
      mkdirSync(stateDir, { mode: 0o700 });
      chownSync(stateDir, 65534, 65534);
      const err = await refusal(stateDir);
      assert.ok(err instanceof ConfigError && /owned by uid 65534/.test(err.message), String(err));
    } finally {
      dir.remove();
    }
  });

  it("stops the daemon with exit code 2 and a message, not a stack trace", () => {
    const dir = tempDir();
    try {
      chmodSync(dir.path, 0o777);
      const run = spawnSync(process.execPath, [join(repoRoot, "dist/hypervisor/main.js")], { env: daemonEnv(dir.path), encoding: "utf8", timeout: 15_000 });
      assert.equal(run.status, 2, run.stderr);
      assert.match(run.stderr, /^hypervisor: invalid configuration: HYPERVISOR_STATE_DIR: expected a directory owned by this user .*\(mode 0777\)/);
      assert.doesNotMatch(run.stderr, /\n\s+at /);
    } finally {
      dir.remove();
    }
  });
});

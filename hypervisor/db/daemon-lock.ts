import Database from "better-sqlite3";
import { chmodSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { ConfigError } from "../config.js";

const LOCK_FILE = "daemon.lock";
const PID_FILE = "daemon.pid";
/** A holder writes its pid just after taking the lock: how long a refused daemon waits to name it. */
const PID_WAIT_MS = 1000;

/**
 * One daemon per state dir: an exclusive lock on `<state dir>/daemon.lock`, held for the
 * process's life. Node has no flock(2); SQLite takes POSIX record locks (fcntl F_SETLK) on its
 * database file and, in exclusive locking mode, never lets them go until the connection closes.
 * The kernel drops such a lock when its process ends, however it ends: a SIGKILLed daemon leaves
 * no stale lock, and there is no pid to trust or to be reused. The holder's pid is written beside
 * the lock only so that a refused daemon can name it.
 */
export class DaemonLock {
  private constructor(
    private readonly db: Database.Database,
    private readonly pidFile: string,
  ) {}

  /** Takes the lock, or refuses with a ConfigError naming the daemon that holds it. */
  static async take(dir: string): Promise<DaemonLock> {
    const lockFile = join(dir, LOCK_FILE);
    const db = new Database(lockFile, { timeout: 0 });
    try {
      db.pragma("locking_mode = EXCLUSIVE");
      // Its content matters to nobody: no journal file beside it.
      db.pragma("journal_mode = MEMORY");
      // The first write takes SQLite's EXCLUSIVE lock; in this locking mode the commit keeps it.
      db.exec("BEGIN EXCLUSIVE; CREATE TABLE IF NOT EXISTS held (since TEXT); DELETE FROM held; INSERT INTO held VALUES (datetime('now')); COMMIT");
    } catch (err) {
      db.close();
      if ((err as { code?: string }).code !== "SQLITE_BUSY") throw err;
      const pid = await holderPid(join(dir, PID_FILE));
      throw new ConfigError(
        "HYPERVISOR_STATE_DIR",
        `a state dir no other daemon uses: the hypervisor daemon with pid ${pid ?? "(not yet written)"} runs on it ` +
          "(stop that one first, or give this one its own HYPERVISOR_STATE_DIR)",
        dir,
      );
    }
    // Never opened here but by SQLite: closing any descriptor of the file would drop the process's
    // record locks on it (POSIX), so the mode is set by name.
    chmodSync(lockFile, 0o600);
    const pidFile = join(dir, PID_FILE);
    // Written whole, then renamed: a refused daemon never reads half a pid.
    writeFileSync(`${pidFile}.tmp`, `${process.pid}\n`, { mode: 0o600 });
    renameSync(`${pidFile}.tmp`, pidFile);
    return new DaemonLock(db, pidFile);
  }

  /** The pid file goes first: while it exists, the lock is held by the pid it names. */
  release(): void {
    rmSync(this.pidFile, { force: true });
    this.db.close();
  }
}

async function holderPid(file: string): Promise<number | undefined> {
  const deadline = Date.now() + PID_WAIT_MS;
  for (;;) {
    try {
      const pid = Number(readFileSync(file, "utf8").trim());
      if (Number.isInteger(pid) && pid > 0) return pid;
    } catch {
      // not written yet: the holder has just taken the lock
    }
    if (Date.now() > deadline) return undefined;
    await sleep(50);
  }
}

/**
 * A unix socket file the daemon is about to bind: one left by a killed predecessor is removed
 * (listen() would fail with EADDRINUSE), one that a live process still accepts on is refused.
 * The state dir's lock already keeps out a second daemon of the same state dir; this keeps out
 * one of another state dir configured with the same HYPERVISOR_OPERATOR_SOCKET.
 */
export async function removeStaleSocket(path: string): Promise<void> {
  const answered = await new Promise<boolean>((resolve) => {
    const socket = connect({ path });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
  if (answered) throw new ConfigError("HYPERVISOR_OPERATOR_SOCKET", "a socket path no running daemon listens on", path);
  rmSync(path, { force: true });
}

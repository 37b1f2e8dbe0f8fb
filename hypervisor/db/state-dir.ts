import Database from "better-sqlite3";
import { chmodSync, existsSync, mkdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { ConfigError } from "../config.js";

/**
 * Makes sure the state directory is the daemon's alone before anything is read from it or
 * written to it: created 0700, or an existing one closed to group and others (an older install
 * may have made it 0755). One that group or others can write to, or that another user owns,
 * is refused rather than repaired: someone else could already have put files there (a
 * database, a socket, a symlink) for the daemon to trust.
 */
export function prepareStateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = statSync(dir);
  const uid = process.getuid?.();
  const mode = st.mode & 0o777;
  const refuse = (why: string) => {
    throw new ConfigError("HYPERVISOR_STATE_DIR", `a directory owned by this user (uid ${uid}) that group and others cannot write to`, `${dir} (${why})`);
  };
  if (!st.isDirectory()) refuse("not a directory");
  if (uid !== undefined && st.uid !== uid) refuse(`owned by uid ${st.uid}`);
  if (mode & 0o022) refuse(`mode ${mode.toString(8).padStart(4, "0")}`);
  if (mode & 0o077) chmodSync(dir, 0o700);
}

/**
 * Refuses to start on a state dir whose users' slots run generations of another runtime: the
 * configured one could run none of them (every request would fail), and the other runtime's
 * sandboxes would keep running with nobody managing them. Read before anything is started.
 */
export function refuseRuntimeSwitch(dir: string, runtime: string): void {
  const file = join(dir, "hypervisor.db");
  if (!existsSync(file)) return;
  const db = new Database(file, { readonly: true, fileMustExist: true });
  let rows: { runtime: string; users: number }[];
  try {
    rows = db
      .prepare("SELECT g.runtime AS runtime, COUNT(DISTINCT s.user) AS users FROM sandboxes s JOIN generations g ON g.id = s.generation_id GROUP BY g.runtime")
      .all() as { runtime: string; users: number }[];
  } catch {
    return; // a database from before its first migration holds no users yet
  } finally {
    db.close();
  }
  const other = rows.find((r) => r.runtime !== runtime);
  if (!other) return;
  throw new ConfigError(
    "HYPERVISOR_RUNTIME",
    `${other.runtime}, the runtime this state dir was used with: ${other.users} user${other.users === 1 ? "'s" : "s'"} slots run ${other.runtime} generations, ` +
      `which ${runtime} cannot run, and their ${other.runtime} sandboxes would keep running unmanaged. ` +
      `Start with HYPERVISOR_RUNTIME=${other.runtime} again (hypervisorctl sandboxes stop --all first, to stop them), or give ${runtime} a new HYPERVISOR_STATE_DIR`,
    runtime,
  );
}

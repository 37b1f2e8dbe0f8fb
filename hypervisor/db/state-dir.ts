import { chmodSync, mkdirSync, statSync } from "node:fs";
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

import { chmodSync, existsSync, mkdirSync, rmdirSync } from "node:fs";

const RUNTIME_DIR = "/run/sshd";
let made = false;

/**
 * sshd refuses to start, and even to print its settings (`sshd -T`), without its privilege
 * separation directory. Debian's service makes it at boot (RuntimeDirectory=sshd); a machine where
 * no sshd ever ran has none, and /run is empty after every reboot. Root-owned, not group or
 * world writable, as sshd checks. One this process made goes when the process exits (if empty):
 * a test leaves nothing under /run.
 */
export function prepareSshdRuntimeDir(): void {
  if (!existsSync(RUNTIME_DIR)) {
    mkdirSync(RUNTIME_DIR, { recursive: true, mode: 0o755 });
    if (!made) {
      made = true;
      process.once("exit", () => {
        try {
          rmdirSync(RUNTIME_DIR);
        } catch {
          // in use or not empty: a real sshd's now
        }
      });
    }
  }
  chmodSync(RUNTIME_DIR, 0o755);
}

import { chmodSync, mkdirSync } from "node:fs";

/**
 * sshd refuses to start, and even to print its settings (`sshd -T`), without its privilege
 * separation directory. Debian's service makes it at boot (RuntimeDirectory=sshd); a machine where
 * no sshd ever ran has none, and /run is empty after every reboot. Root-owned, not group or
 * world writable, as sshd checks.
 */
export function prepareSshdRuntimeDir(): void {
  mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });
  chmodSync("/run/sshd", 0o755);
}

import { readdirSync, readFileSync } from "node:fs";

/**
 * Pids of the process-runtime sandboxes of `users`, read from /proc (processes whose environment
 * names the user), not through the code under test.
 */
export function sandboxPids(users: readonly string[]): number[] {
  const marks = users.map((user) => `HYPERVISOR_USER=${user}`);
  return readdirSync("/proc")
    .filter((pid) => /^\d+$/.test(pid))
    .filter((pid) => {
      try {
        const env = readFileSync(`/proc/${pid}/environ`, "latin1").split("\0");
        return marks.some((mark) => env.includes(mark));
      } catch {
        return false; // gone, or not ours to read
      }
    })
    .map(Number);
}

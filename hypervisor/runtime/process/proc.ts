import type { ChildProcess } from "node:child_process";
import { closeSync, readdirSync, readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";

/** Whether a live (not zombie) process has `entry` in its environment. */
export function environHas(pid: number, entry: string): boolean {
  try {
    const environ = readFileSync(`/proc/${pid}/environ`, "latin1");
    const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
    // A zombie (state Z) has exited; only its parent can reap it.
    if (/^\d+ \(.*\) Z/.test(stat)) return false;
    return environ.split("\0").includes(entry);
  } catch {
    return false;
  }
}

/** Children of a process: the kernel's list (CONFIG_PROC_CHILDREN), else every process's parent. */
export function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "latin1").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    const found: number[] = [];
    for (const entry of readdirSync("/proc").filter((e) => /^\d+$/.test(e))) {
      try {
        // The parent is the 2nd field after the parenthesised command name, which may hold spaces.
        const stat = readFileSync(`/proc/${entry}/stat`, "latin1");
        if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid) found.push(Number(entry));
      } catch {
        // gone meanwhile
      }
    }
    return found;
  }
}

export async function waitPidGone(pid: number, identity: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!environHas(pid, identity)) return true;
    await sleep(20);
  }
  return !environHas(pid, identity);
}

export function exitOf(child: ChildProcess): Promise<string> {
  const describe = () => (child.signalCode ? `signal ${child.signalCode}` : `code ${child.exitCode}`);
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(describe());
  return new Promise((resolve) => child.once("exit", () => resolve(describe())));
}

export function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ESRCH") throw err;
  }
}

/** O_CLOEXEC as /proc/<pid>/fdinfo prints open flags (octal), on x86-64 and arm64 alike. */
const O_CLOEXEC = 0o2000000;

/**
 * Closes every descriptor above 2 this process holds without close-on-exec, which every child
 * (every sandbox) would otherwise inherit (DESIGN §5a). Node marks inherited descriptors
 * close-on-exec at start only up to the first gap past 15 (libuv's
 * uv_disable_stdio_inheritance), so one a shell left open at, say, 100 would pass; those it
 * marks (systemd's listening sockets among them) stay open. Returns the descriptors closed.
 */
export function closeInheritedDescriptors(): number[] {
  const closed: number[] = [];
  for (const fd of readdirSync("/proc/self/fd").map(Number)) {
    if (fd <= 2) continue;
    try {
      const flags = /^flags:\s+([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "latin1"));
      if (!flags || (parseInt(flags[1]!, 8) & O_CLOEXEC) !== 0) continue;
      closeSync(fd);
      closed.push(fd);
    } catch {
      // gone meanwhile: the directory's own descriptor, listed while it was open
    }
  }
  return closed;
}

import { spawn } from "node:child_process";
import { join } from "node:path";
import { repoRoot } from "./paths.js";

const CLI = join(repoRoot, "dist/hypervisor/hypervisorctl/hypervisorctl.js");

export interface CtlRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * The compiled hypervisorctl as an operator runs it, with none of this process's HYPERVISOR_*
 * settings; a child process, so a daemon in this process keeps serving while it waits.
 */
export function hypervisorctl(args: string[], env: Record<string, string> = {}): Promise<CtlRun> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HYPERVISOR_")));
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...clean, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
  child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout, stderr }));
  });
}

export const explainRun = (r: CtlRun) => `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;

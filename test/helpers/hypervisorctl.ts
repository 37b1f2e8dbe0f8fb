import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { repoRoot } from "./paths.js";

export const CLI = join(repoRoot, "dist/hypervisor/hypervisorctl/hypervisorctl.js");

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The CLI as its own process, without the test's HYPERVISOR_* environment; never blocks this process. */
export function startCli(args: string[], env: Record<string, string> = {}, command: string[] = [process.execPath, CLI]): ChildProcess & { out(): string } {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HYPERVISOR_")));
  const child = spawn(command[0]!, [...command.slice(1), ...args], { env: { ...clean, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
  return Object.assign(child, { out: () => stdout });
}

/** Runs the CLI to its end. */
export function runCli(args: string[], env: Record<string, string> = {}, command?: string[]): Promise<CliRun> {
  const child = startCli(args, env, command);
  let stderr = "";
  child.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout: child.out(), stderr }));
  });
}

export const explain = (r: CliRun) => `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;

/** Resolves once the child's stdout satisfies `test`, or rejects when it exits first. */
export function waitForOutput(child: ChildProcess & { out(): string }, test: (out: string) => boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (!test(child.out())) return;
      child.stdout!.off("data", check);
      resolve();
    };
    child.stdout!.on("data", check);
    child.once("exit", (code) => reject(new Error(`exited with ${code} before the output came: ${child.out()}`)));
    check();
  });
}

// Running host commands for the rehearsal: each one logged with its duration, its output kept for
// the report.
import { spawn, spawnSync, type SpawnOptions } from "node:child_process";

export interface Ran {
  command: string;
  status: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs to completion; never throws for a non-zero exit (the caller decides), only when it cannot start. */
export function run(
  command: string,
  args: readonly string[],
  options: { input?: string; env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {},
): Ran {
  const started = performance.now();
  const result = spawnSync(command, args, {
    encoding: "utf8",
    input: options.input,
    env: options.env ?? process.env,
    cwd: options.cwd,
    timeout: options.timeoutMs,
    maxBuffer: 256 * 1024 * 1024,
  });
  if (result.error && !("status" in result && result.status !== null)) throw result.error;
  return {
    command: [command, ...args].join(" "),
    status: result.status,
    stdout: result.stdout ?? "",
    stderr: result.stderr ?? "",
    ms: performance.now() - started,
  };
}

/** Like run(), but a non-zero exit is an error that carries the output. */
export function must(command: string, args: readonly string[], options: Parameters<typeof run>[2] = {}): Ran {
  const result = run(command, args, options);
  if (result.status !== 0) throw new Error(`${result.command} exited ${result.status}:\n${tail(result.stderr || result.stdout, 40)}`);
  return result;
}

/** The same, asynchronously, streaming nothing: for the long steps (debootstrap) that must not block timers. */
export function runAsync(command: string, args: readonly string[], options: SpawnOptions & { input?: string } = {}): Promise<Ran> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { ...options, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout!.setEncoding("utf8").on("data", (c: string) => (stdout += c));
    child.stderr!.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    child.on("error", reject);
    // A child that exits without reading its input must not take this process down (EPIPE).
    child.stdin!.on("error", () => undefined);
    child.stdin!.end(options.input ?? "");
    child.on("close", (status) => resolve({ command: [command, ...args].join(" "), status, stdout, stderr, ms: performance.now() - started }));
  });
}

/** The last `lines` lines of a text, for reports and error messages. */
export function tail(text: string, lines: number): string {
  const all = text.trimEnd().split("\n");
  return (all.length > lines ? [`… (${all.length - lines} lines above)`, ...all.slice(-lines)] : all).join("\n");
}

export function log(message: string): void {
  process.stderr.write(`[rehearsal ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

/** One JSON object per line on stdout: the hypervisor's runtimes collect it as the sandbox log. */
export function logLine(record: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

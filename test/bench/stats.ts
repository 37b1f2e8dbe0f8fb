export interface Summary {
  n: number;
  median: number;
  p95: number;
  p99: number;
  min: number;
  max: number;
}

/** Nearest-rank percentiles over the samples, in the samples' unit. */
export function summarize(samples: number[]): Summary {
  const s = [...samples].sort((a, b) => a - b);
  const at = (p: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
  return { n: s.length, median: at(50), p95: at(95), p99: at(99), min: s[0]!, max: s[s.length - 1]! };
}

/** A row with `baseline` shows its median as a multiple of it; `isBaseline` marks the reference row. */
export function printTable(title: string, rows: { name: string; summary: Summary; baseline?: Summary; isBaseline?: boolean }[]): void {
  console.log(`\n${title}`);
  console.log(`${"".padEnd(44)}${"n".padStart(4)}${"median ms".padStart(12)}${"p95 ms".padStart(10)}${"×baseline (median)".padStart(21)}`);
  for (const { name, summary, baseline, isBaseline } of rows) {
    const ratio = baseline ? (summary.median / baseline.median).toFixed(2) : isBaseline ? "baseline" : "-";
    console.log(
      `${name.padEnd(44)}${String(summary.n).padStart(4)}${summary.median.toFixed(1).padStart(12)}${summary.p95.toFixed(1).padStart(10)}${ratio.padStart(21)}`,
    );
  }
}

/** `requests` calls of `send`, `concurrency` at a time (each waits for its last): each one's latency (ms) and the whole run's rate. */
export async function closedLoop(requests: number, concurrency: number, send: () => Promise<void>): Promise<{ latencies: number[]; perSecond: number }> {
  const latencies: number[] = [];
  let next = 0;
  const began = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next++ < requests) {
        const at = performance.now();
        await send();
        latencies.push(performance.now() - at);
      }
    }),
  );
  return { latencies, perSecond: (requests / (performance.now() - began)) * 1000 };
}

import { renameSync, statSync } from "node:fs";
import { copyFile, open, readdir, stat, truncate, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { LineSplitter, pause, type LogOptions } from "../log-lines.js";

const LOG_ROTATE_BYTES = 10 * 1024 * 1024;
const LOG_READ_BYTES = 64 * 1024;
/** How often a followed log is looked at for new output. */
const LOG_POLL_MS = 200;
/** How often running sandboxes' logs are checked against LOG_ROTATE_BYTES. */
export const LOG_TRIM_EVERY_MS = 60_000;
/** The file a sandbox writes its stdout and stderr to, in its record directory. */
export const LOG_FILE = "sandbox.log";

/**
 * Keeps each sandbox's log within LOG_ROTATE_BYTES while it runs: a log past it is copied to
 * `sandbox.log.1` and emptied in place (the sandbox appends, so its next line lands at the
 * start). A line written between the copy and the cut is lost; a start rotates by rename.
 */
export async function trimLogs(recordsDir: string): Promise<void> {
  for (const entry of await readdir(recordsDir).catch(() => [] as string[])) {
    const path = join(recordsDir, entry, LOG_FILE);
    const size = await stat(path).then(
      (s) => s.size,
      () => 0,
    );
    if (size <= LOG_ROTATE_BYTES) continue;
    await copyFile(path, `${path}.1`);
    await truncate(path, 0);
  }
}

/** Before a start: a log past the bound moves to `.1`. */
export function rotate(path: string): void {
  try {
    if (statSync(path).size > LOG_ROTATE_BYTES) renameSync(path, `${path}.1`);
  } catch {
    // no log yet
  }
}

/**
 * The sandbox's output file (stdout and stderr share it), read from where its last `tail` lines
 * begin; following polls it, since the sandbox writes it directly and outlives the daemon.
 * `running` is asked before each look, so a sandbox's last words are read before the end.
 */
export async function* readLog(path: string, opts: LogOptions, running: () => Promise<boolean>): AsyncIterable<string> {
  const file = await open(path, "r").catch(() => undefined);
  if (!file) return;
  try {
    let offset = await tailOffset(file, opts.tail);
    const splitter = new LineSplitter();
    for (;;) {
      // Read what is there before judging whether the sandbox still runs: its last words count.
      const stillRunning = opts.follow ? await running() : false;
      const { size } = await file.stat();
      // Cut while followed (a start rotates a large log away): start again at its beginning.
      if (size < offset) offset = 0;
      while (offset < size) {
        const chunk = Buffer.alloc(Math.min(LOG_READ_BYTES, size - offset));
        const { bytesRead } = await file.read(chunk, 0, chunk.length, offset);
        if (bytesRead === 0) break;
        offset += bytesRead;
        yield* splitter.push(chunk.subarray(0, bytesRead));
      }
      if (!stillRunning || opts.signal?.aborted) break;
      await pause(LOG_POLL_MS, opts.signal);
    }
    yield* splitter.end();
  } finally {
    await file.close();
  }
}

/** Where the last `tail` lines of the file begin, found by reading backwards from its end. */
async function tailOffset(file: FileHandle, tail: number): Promise<number> {
  const { size } = await file.stat();
  if (tail <= 0) return size;
  // A final line break ends the last line; it does not begin another.
  let newlines = 0;
  let end = size;
  const chunk = Buffer.alloc(LOG_READ_BYTES);
  while (end > 0) {
    const start = Math.max(0, end - chunk.length);
    const { bytesRead } = await file.read(chunk, 0, end - start, start);
    for (let i = bytesRead - 1; i >= 0; i--) {
      if (chunk[i] !== 0x0a || start + i === size - 1) continue;
      if (++newlines === tail) return start + i + 1;
    }
    end = start;
  }
  return 0;
}

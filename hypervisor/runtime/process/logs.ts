import { open, readdir, stat, truncate, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { LineSplitter, pause, type LogOptions } from "../log-lines.js";
import { exists } from "./files.js";
import { LOG_FILE, LOG_PIPE } from "./log-drains.js";

const LOG_READ_BYTES = 64 * 1024;
/** How often a followed log is looked at for new output. */
const LOG_POLL_MS = 200;
/** How often logs that sandboxes still write themselves are checked against their bound. */
export const LEGACY_TRIM_EVERY_MS = 60_000;

/**
 * Sandboxes started before their output went through a pipe (./log-drains.ts) still write their
 * log file themselves: past the bound it is emptied in place, nothing copied, until their next
 * start gives them a pipe.
 */
export async function trimLegacyLogs(recordsDir: string, maxBytes: number): Promise<void> {
  for (const entry of await readdir(recordsDir).catch(() => [] as string[])) {
    if (exists(join(recordsDir, entry, LOG_PIPE))) continue;
    const path = join(recordsDir, entry, LOG_FILE);
    const size = await stat(path).then(
      (s) => s.size,
      () => 0,
    );
    if (size > maxBytes) await truncate(path, 0);
  }
}

/**
 * The sandbox's log (stdout and stderr share it), read from where its last `tail` lines begin,
 * reaching into the older half when the current one holds fewer; following polls it, and goes on
 * in the new file when the daemon's drain rotates it. `running` is asked before each look, so a
 * sandbox's last words are read before the end.
 */
export async function* readLog(path: string, opts: LogOptions, running: () => Promise<boolean>): AsyncIterable<string> {
  let file = await open(path, "r").catch(() => undefined);
  if (!file) return;
  const splitter = new LineSplitter();
  try {
    const tail = await tailOffset(file, opts.tail);
    let offset = tail.offset;
    if (tail.lines < opts.tail) {
      const older = await open(`${path}.1`, "r").catch(() => undefined);
      if (older) {
        try {
          const from = await tailOffset(older, opts.tail - tail.lines);
          for await (const chunk of chunks(older, from.offset, (await older.stat()).size)) yield* splitter.push(chunk);
        } finally {
          await older.close();
        }
      }
    }
    for (;;) {
      // Read what is there before judging whether the sandbox still runs: its last words count.
      const stillRunning = opts.follow ? await running() : false;
      const { size, ino } = await file.stat();
      // Cut while followed (emptied in place): start again at its beginning.
      if (size < offset) offset = 0;
      for await (const chunk of chunks(file, offset, size)) {
        offset += chunk.length;
        yield* splitter.push(chunk);
      }
      if (!stillRunning || opts.signal?.aborted) break;
      const current = await stat(path).catch(() => undefined);
      if (current && current.ino !== ino) {
        // Rotated: what reached the old file before the rename is read first, then the new one.
        for await (const chunk of chunks(file, offset, (await file.stat()).size)) yield* splitter.push(chunk);
        await file.close();
        file = await open(path, "r");
        offset = 0;
        continue;
      }
      await pause(LOG_POLL_MS, opts.signal);
    }
    yield* splitter.end();
  } finally {
    await file.close();
  }
}

async function* chunks(file: FileHandle, from: number, to: number): AsyncIterable<Buffer> {
  for (let offset = from; offset < to;) {
    const chunk = Buffer.alloc(Math.min(LOG_READ_BYTES, to - offset));
    const { bytesRead } = await file.read(chunk, 0, chunk.length, offset);
    if (bytesRead === 0) return;
    offset += bytesRead;
    yield chunk.subarray(0, bytesRead);
  }
}

/**
 * Where the last `tail` lines of the file begin, found by reading backwards from its end, and
 * how many lines it found (fewer than `tail` when the file holds fewer).
 */
async function tailOffset(file: FileHandle, tail: number): Promise<{ offset: number; lines: number }> {
  const { size } = await file.stat();
  if (tail <= 0) return { offset: size, lines: 0 };
  // A final line break ends the last line; it does not begin another.
  let newlines = 0;
  let end = size;
  const chunk = Buffer.alloc(LOG_READ_BYTES);
  while (end > 0) {
    const start = Math.max(0, end - chunk.length);
    const { bytesRead } = await file.read(chunk, 0, end - start, start);
    for (let i = bytesRead - 1; i >= 0; i--) {
      if (chunk[i] !== 0x0a || start + i === size - 1) continue;
      if (++newlines === tail) return { offset: start + i + 1, lines: tail };
    }
    end = start;
  }
  return { offset: 0, lines: size > 0 ? newlines + 1 : 0 };
}

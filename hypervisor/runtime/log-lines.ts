import { StringDecoder } from "node:string_decoder";

/** What a caller asks of a sandbox's logs (stdout and stderr, as one stream of lines). */
export interface LogOptions {
  /** Only the last this many lines already written; 0 for none (with follow: only what comes next). */
  tail: number;
  /** Keep the stream open and yield new lines while the sandbox runs; it ends when the sandbox stops. */
  follow: boolean;
  /** Ends the stream early, e.g. when the reader went away. */
  signal?: AbortSignal;
}

/**
 * Cuts text that arrives in chunks into lines, without their line break (LF or CRLF). A multi-byte
 * character split between two chunks is joined again before it is decoded.
 */
export class LineSplitter {
  private readonly decoder = new StringDecoder("utf8");
  private pending = "";

  push(chunk: Buffer): string[] {
    const lines = (this.pending + this.decoder.write(chunk)).split("\n");
    this.pending = lines.pop()!;
    return lines.map(trimCr);
  }

  /** The last line, if the text did not end with a line break. */
  end(): string[] {
    const rest = this.pending + this.decoder.end();
    this.pending = "";
    return rest ? [trimCr(rest)] : [];
  }
}

/** A sandbox's last lines as one text, for log entries and tests. */
export async function logText(lines: AsyncIterable<string>): Promise<string> {
  let text = "";
  for await (const line of lines) text += `${line}\n`;
  return text;
}

/** Resolves after `ms`, or at once when the signal fires; never rejects. */
export function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

function trimCr(line: string): string {
  return line.endsWith("\r") ? line.slice(0, -1) : line;
}

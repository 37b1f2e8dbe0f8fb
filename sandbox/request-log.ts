import { createWriteStream, type WriteStream } from "node:fs";
import type { IncomingMessage } from "node:http";
import { join } from "node:path";

export interface RequestRecord {
  msg: "request";
  at: string;
  method: string;
  url: string;
  user: string | null;
  upgrade: boolean;
}

/**
 * Records every request that reaches the sandbox, so tests can ask the sandbox directly what
 * did or did not get past the proxy. The ring answers `GET /__sandbox/requests`; stdout and
 * `requests.jsonl` keep the full history.
 */
export class RequestLog {
  readonly #ring: RequestRecord[] = [];
  readonly #capacity: number;
  #next = 0;
  readonly #file: WriteStream;

  constructor(dataDir: string, capacity = 2000) {
    this.#capacity = capacity;
    this.#file = createWriteStream(join(dataDir, "requests.jsonl"), { flags: "a" });
    // A full disk must not take the sandbox down; the ring and stdout still work.
    this.#file.on("error", (error) => {
      process.stderr.write(`${JSON.stringify({ msg: "request log write failed", error: error.message })}\n`);
    });
  }

  record(req: IncomingMessage, upgrade: boolean): void {
    const user = req.headers["x-hypervisor-user"];
    const record: RequestRecord = {
      msg: "request",
      at: new Date().toISOString(),
      method: req.method ?? "GET",
      url: req.url ?? "/",
      user: typeof user === "string" ? user : null,
      upgrade,
    };
    if (this.#ring.length < this.#capacity) this.#ring.push(record);
    else this.#ring[this.#next] = record;
    this.#next = (this.#next + 1) % this.#capacity;
    const line = `${JSON.stringify(record)}\n`;
    process.stdout.write(line);
    if (this.#file.writable) this.#file.write(line);
  }

  /** Oldest first. */
  entries(): RequestRecord[] {
    if (this.#ring.length < this.#capacity) return [...this.#ring];
    return [...this.#ring.slice(this.#next), ...this.#ring.slice(0, this.#next)];
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.#file.end(resolve));
  }
}

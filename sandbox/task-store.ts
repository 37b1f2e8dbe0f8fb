import { appendFileSync, readFileSync } from "node:fs";
import { join } from "node:path";

export interface TaskRecord {
  id: string;
  input: string;
  output: string;
  at: string;
  version: string;
}

const RECENT = 100;

/** Task history in `tasks.jsonl` under the data dir: the durable state a swap must not lose. */
export class TaskStore {
  readonly #path: string;
  readonly #recent: TaskRecord[];

  private constructor(path: string, recent: TaskRecord[]) {
    this.#path = path;
    this.#recent = recent;
  }

  static open(dataDir: string): TaskStore {
    const path = join(dataDir, "tasks.jsonl");
    let text = "";
    try {
      text = readFileSync(path, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
    }
    // A kill during a write can leave a torn last line; terminate it so the next append
    // starts a line of its own instead of gluing onto the fragment.
    if (text !== "" && !text.endsWith("\n")) appendFileSync(path, "\n");
    const recent = text.split("\n").flatMap(parseRecord).slice(-RECENT);
    return new TaskStore(path, recent);
  }

  /** Synchronous, so a client that has seen the result can rely on it being on disk. */
  append(record: TaskRecord): void {
    appendFileSync(this.#path, `${JSON.stringify(record)}\n`);
    this.#recent.push(record);
    if (this.#recent.length > RECENT) this.#recent.shift();
  }

  /** The last 100 tasks, newest last. */
  recent(): TaskRecord[] {
    return [...this.#recent];
  }
}

function parseRecord(line: string): TaskRecord[] {
  if (line.trim() === "") return [];
  try {
    const value: unknown = JSON.parse(line);
    if (typeof value === "object" && value !== null && typeof (value as TaskRecord).id === "string") {
      return [value as TaskRecord];
    }
  } catch {
    // A torn line from an interrupted write is skipped, not fatal.
  }
  return [];
}

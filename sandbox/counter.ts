import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const FILE = "counter";

/**
 * A number kept in the data directory that each `POST /counter` adds one to: a person (or a test)
 * sees at a glance which data a sandbox runs on, and whether it continues from where it was.
 */
export class Counter {
  private readonly path: string;

  constructor(dataDir: string) {
    this.path = join(dataDir, FILE);
  }

  value(): number {
    if (!existsSync(this.path)) return 0;
    const n = Number(readFileSync(this.path, "utf8").trim());
    return Number.isSafeInteger(n) ? n : 0;
  }

  /** Adds one and writes it through a rename, so a crash leaves the old number or the new one. */
  increment(): number {
    return this.set(this.value() + 1);
  }

  set(n: number): number {
    writeFileSync(`${this.path}.tmp`, `${n}\n`);
    renameSync(`${this.path}.tmp`, this.path);
    return n;
  }
}

import { mkdir, readFile, readdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Slot } from "../../../proxy/target.js";
import type { SandboxSpec } from "../container-runtime.js";
import type { SandboxNet } from "./netns.js";

/** What survives a hypervisor restart: enough to find and adopt the process again. */
export interface ProcessRecord {
  spec: SandboxSpec;
  pid?: number;
  port?: number;
  /** Its own network, while it runs (the daemon is root); absent, it shares the host's. */
  net?: SandboxNet;
  startedAt?: string;
  /**
   * Contained: bubblewrap's init of the sandbox's pid namespace, whose process group the
   * sandbox runs in and whose death ends every process the sandbox started. Uncontained, the
   * sandbox leads a process group of its own.
   */
  init?: number;
  /** Stopped, or refused a start, over its disk: the message its user and the operator see until a start succeeds. */
  overDisk?: string;
}

/** One directory per sandbox under the runtime's records dir: `sandbox.json`, its log. */
export class Records {
  constructor(readonly root: string) {}

  dir(user: string, slot: Slot): string {
    return join(this.root, `${user}-${slot}`);
  }

  async make(user: string, slot: Slot): Promise<void> {
    await mkdir(this.dir(user, slot), { recursive: true, mode: 0o700 });
  }

  async read(user: string, slot: Slot): Promise<ProcessRecord | undefined> {
    try {
      return JSON.parse(await readFile(join(this.dir(user, slot), "sandbox.json"), "utf8")) as ProcessRecord;
    } catch {
      return undefined;
    }
  }

  /** Write-then-rename so a crash never leaves a torn record behind. */
  async write(user: string, slot: Slot, record: ProcessRecord): Promise<void> {
    const path = join(this.dir(user, slot), "sandbox.json");
    await writeFile(`${path}.tmp`, JSON.stringify(record), { mode: 0o600 });
    await rename(`${path}.tmp`, path);
  }

  /** Forgets the sandbox; `withLogs` removes its whole directory. */
  async remove(user: string, slot: Slot, withLogs: boolean): Promise<void> {
    if (withLogs) await rm(this.dir(user, slot), { recursive: true, force: true });
    else await rm(join(this.dir(user, slot), "sandbox.json"), { force: true });
  }

  /** Every `<user>-<slot>` directory, whether or not it holds a record. */
  async entries(): Promise<{ entry: string; user: string; slot: Slot }[]> {
    let names: string[];
    try {
      names = await readdir(this.root);
    } catch {
      return [];
    }
    return names.flatMap((entry) => {
      const m = /^(.+)-([ab])$/.exec(entry);
      return m ? [{ entry, user: m[1]!, slot: m[2] as Slot }] : [];
    });
  }
}

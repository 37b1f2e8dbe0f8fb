import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { chmod, lchown, mkdir, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { HypervisorError } from "../../errors.js";

/**
 * Sandbox uids and gids, one pair per sandbox: 0x70000000 up, a range systemd's "Users,
 * Groups, UIDs and GIDs on systemd Systems" leaves unused (below 2^31, clear of its container
 * and foreign ranges). They need no /etc/passwd entry. The first is the start-up probe's.
 */
export const SANDBOX_UID_BASE = 0x7000_0000;
export const SANDBOX_UID_COUNT = 0x1_0000;
export const PROBE_UID = SANDBOX_UID_BASE;

const run = promisify(execFile);

/**
 * Which sandbox owns which uid: one file per claimed uid under `<records>/uids`, created
 * exclusively, so two sandboxes never share a uid, on this host or across restarts.
 */
export class UidClaims {
  private readonly dir: string;

  constructor(recordsDir: string) {
    this.dir = join(recordsDir, "uids");
  }

  /**
   * The sandbox's uid: the owner of its data directory when that uid is claimed for it, else a
   * newly claimed one, to which the data directory (and, for data from before, all it holds)
   * is handed.
   */
  async uidFor(name: string, dataDir: string): Promise<number> {
    const owner = (await stat(dataDir)).uid;
    if ((await this.claimant(owner)) === name) return owner;
    const uid = await this.claim(name);
    if ((await readdir(dataDir)).length === 0) await lchown(dataDir, uid, uid);
    // GNU chown -R without -L follows no symbolic link (-P), and -h changes links themselves.
    else await run("chown", ["-hR", `${uid}:${uid}`, "--", dataDir]);
    await chmod(dataDir, 0o700);
    return uid;
  }

  /** The uid claimed for `name` that owns its data directory, if any: nothing is claimed here. */
  async owned(name: string, dataDir: string): Promise<number | undefined> {
    const owner = await stat(dataDir).then(
      (s) => s.uid,
      () => undefined,
    );
    return owner !== undefined && (await this.claimant(owner)) === name ? owner : undefined;
  }

  /** Frees `uid` if `name` holds it: the uid goes with the data it owned. */
  async release(uid: number, name: string): Promise<void> {
    if ((await this.claimant(uid)) === name) await rm(this.path(uid), { force: true });
  }

  private async claim(name: string): Promise<number> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    // Start where the name hashes to, so a sandbox's uid is usually the same on every host.
    const slots = SANDBOX_UID_COUNT - 1;
    const start = createHash("sha256").update(name).digest().readUInt32BE(0) % slots;
    for (let i = 0; i < slots; i++) {
      const uid = PROBE_UID + 1 + ((start + i) % slots);
      try {
        await writeFile(this.path(uid), name, { flag: "wx", mode: 0o600 });
        return uid;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      }
    }
    throw new HypervisorError("capacity_exhausted", `all ${slots} sandbox uids are claimed`);
  }

  private path(uid: number): string {
    return join(this.dir, String(uid));
  }

  private async claimant(uid: number): Promise<string | undefined> {
    if (uid <= PROBE_UID || uid >= SANDBOX_UID_BASE + SANDBOX_UID_COUNT) return undefined;
    return readFile(this.path(uid), "utf8").catch(() => undefined);
  }
}

import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runId } from "./run-id.js";

export type LoopFsKind = "btrfs" | "xfs" | "ext4";

export interface LoopFs {
  kind: LoopFsKind;
  /** Where it is mounted. */
  mount: string;
  /** Unmounts it, detaches its loop device and deletes its image; safe to call twice. */
  remove(): void;
}

const MKFS: Record<LoopFsKind, string[]> = {
  btrfs: ["mkfs.btrfs", "-q", "-f"],
  // reflink=1 is xfsprogs' default since 5.1; said anyway, it is what the test is about.
  xfs: ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
  ext4: ["mkfs.ext4", "-q", "-F"],
};

const run = (cmd: string, args: string[]) =>
  execFileSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"] })
    .toString()
    .trim();

/**
 * A file system of its own for one test: a sparse image under the temp dir, on a loop device of
 * its own, mounted in a directory named after the run. `remove` undoes all three; call it from
 * `after` so a failed test leaves no mount and no loop device behind.
 */
export function loopFs(kind: LoopFsKind, sizeMiB = 512): LoopFs {
  const dir = mkdtempSync(join(tmpdir(), `hv-${runId}-${kind}-`));
  const image = join(dir, "image");
  const mount = join(dir, "mnt");
  mkdirSync(mount);
  let device: string | undefined;
  let mounted = false;
  const remove = () => {
    if (mounted) {
      try {
        run("umount", [mount]);
      } catch {
        run("umount", ["-l", mount]);
      }
      mounted = false;
    }
    if (device) {
      run("losetup", ["-d", device]);
      device = undefined;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    run("truncate", ["-s", `${sizeMiB}M`, image]);
    const [mkfs, ...args] = MKFS[kind];
    run(mkfs!, [...args, image]);
    device = run("losetup", ["--find", "--show", image]);
    run("mount", [device, mount]);
    mounted = true;
  } catch (err) {
    remove();
    throw err;
  }
  return { kind, mount, remove };
}

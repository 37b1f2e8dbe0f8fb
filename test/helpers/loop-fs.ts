import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
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

const KINDS: LoopFsKind[] = ["btrfs", "xfs", "ext4"];

/** Where a run's loop file systems live: the temp dir, named after the run and the kind. */
const prefixOf = (id: string, kind: LoopFsKind) => `hv-${id}-${kind}-`;

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
  const dir = mkdtempSync(join(tmpdir(), prefixOf(runId, kind)));
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

/**
 * What a test process of run `id` killed before its `remove` left: its loop file systems' mounts,
 * loop devices and images, found by the names loopFs gives them. For the run's last cleanup.
 */
export function removeRunLoopFs(id: string): void {
  const dirs = readdirSync(tmpdir())
    .filter((e) => KINDS.some((kind) => e.startsWith(prefixOf(id, kind))))
    .map((e) => join(tmpdir(), e));
  if (!dirs.length) return;
  const inside = (path: string) => dirs.some((d) => path.startsWith(`${d}/`));
  // /proc/mounts escapes spaces and the like as octal; these names have none.
  const mounts = readFileSync("/proc/mounts", "utf8")
    .split("\n")
    .map((line) => line.split(" ")[1] ?? "")
    .filter(inside);
  for (const mount of mounts.reverse()) run("umount", ["-l", mount]);
  const loops = JSON.parse(run("losetup", ["--list", "--json", "-O", "NAME,BACK-FILE"]) || '{"loopdevices":[]}') as {
    loopdevices: { name: string; "back-file": string | null }[];
  };
  for (const loop of loops.loopdevices) if (loop["back-file"] && inside(loop["back-file"].replace(/ \(deleted\)$/, ""))) run("losetup", ["-d", loop.name]);
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
}

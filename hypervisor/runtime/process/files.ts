import { statSync } from "node:fs";
import { stat } from "node:fs/promises";
import { dirname, isAbsolute, relative, sep } from "node:path";

export async function executable(path: string): Promise<boolean> {
  return stat(path).then(
    (s) => s.isFile() && (s.mode & 0o111) !== 0,
    () => false,
  );
}

export function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** `path` and each directory above it, nearest first. */
export function ancestors(path: string): string[] {
  const out = [path];
  while (dirname(out.at(-1)!) !== out.at(-1)) out.push(dirname(out.at(-1)!));
  return out;
}

/** Whether `inner` is `outer` or lies below it, by path alone. */
export function within(outer: string, inner: string): boolean {
  const rel = relative(outer, inner);
  return rel !== ".." && !rel.startsWith(`..${sep}`) && !isAbsolute(rel);
}

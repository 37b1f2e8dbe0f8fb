/**
 * "Did you mean": the known word closest to a mistyped one, when it is close enough to be the
 * word meant (a slip of one or two letters, a missing plural `s`), else undefined.
 */
export function closest(word: string, known: readonly string[]): string | undefined {
  const w = word.toLowerCase();
  let best: { name: string; distance: number } | undefined;
  for (const name of known) {
    const d = distance(w, name);
    if (!best || d < best.distance) best = { name, distance: d };
  }
  if (!best) return undefined;
  // Two edits in a long word are a typo; in a three-letter word they are another word.
  const allowed = Math.min(2, Math.floor(Math.max(w.length, best.name.length) / 3));
  return best.distance <= allowed ? best.name : undefined;
}

/** Edits (insert, delete, substitute, swap two neighbours) that turn a into b. */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}

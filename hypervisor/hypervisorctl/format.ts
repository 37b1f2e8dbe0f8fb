/** Plain-text rendering for hypervisorctl: aligned tables, durations, timestamps. */

/** Columns separated by two spaces, each as wide as its widest cell; the last is not padded. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(width(h), ...rows.map((r) => width(r[i] ?? ""))));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : pad(c, widths[i]!)))
      .join("  ")
      .trimEnd();
  return [line(headers), ...rows.map(line)].join("\n") + "\n";
}

/** Label/value pairs, values aligned. */
export function fields(pairs: Array<[string, string]>): string {
  const w = Math.max(...pairs.map(([k]) => width(k)));
  return pairs.map(([k, v]) => `${pad(k, w)}  ${v}`).join("\n") + "\n";
}

export function pad(s: string, w: number): string {
  return s + " ".repeat(Math.max(0, w - width(s)));
}

/** The API's answer as printed by --json: as received, ending in a newline. */
export function asLine(raw: string): string {
  return raw.endsWith("\n") ? raw : `${raw}\n`;
}

/** `1 session`, `2 sessions`. */
export function count(n: number, thing: string): string {
  return `${n} ${thing}${n === 1 ? "" : "s"}`;
}

/**
 * One user's line in a run over many: a mark (`✓` done, `✗` failed, `…` under way), the user
 * padded to `width`, then the columns, two spaces apart.
 */
export function userLine(mark: "✓" | "✗" | "…", user: string, width: number, columns: string[]): string {
  return [`${mark} ${pad(user, width)}`, ...columns].join("  ");
}

/** Code points, so "→" and "✓" count as one column. */
function width(s: string): number {
  return [...s].length;
}

/** 41 ms, 1.2 s, 3m 05s, 2h 10m, 3d 4h. */
export function duration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  const s = Math.floor(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86_400)}d ${Math.floor((s % 86_400) / 3600)}h`;
}

/** An ISO timestamp as `2024-05-01 10:00:00Z` (UTC, second precision); "-" for none. */
export function time(iso: string | null | undefined): string {
  if (!iso) return "-";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return `${d.toISOString().slice(0, 19).replace("T", " ")}Z`;
}

/** Cuts a long cell, marking the cut. */
export function clip(s: string, max: number): string {
  const chars = [...s];
  return chars.length <= max ? s : `${chars.slice(0, max - 1).join("")}…`;
}

/**
 * What a sandbox wrote, made inert for the operator's terminal: control characters other than
 * tab and line feed (escape sequences can retitle the window, redraw the screen or set the
 * clipboard; a carriage return can hide a line) are shown as \xNN instead of acting.
 */
export function inert(text: string): string {
  return text.replace(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

/**
 * A sandbox's log as a person reads it on the account page: newest last, one line per entry,
 * JSON records (pino's and the like) turned back into text (time, level when it is not
 * routine, message, the other plain fields), and runs of /health probes folded into one line,
 * as the hypervisor's own probes would otherwise be most of what a sandbox has printed.
 */

/** pino's numeric levels; anything below warn is routine and not named. */
const LEVELS: Record<number, string> = { 40: "WARN", 50: "ERROR", 60: "FATAL" };
const ROUTINE_LEVELS = new Set(["trace", "debug", "info"]);
/** Fields that say where or when, not what: shown otherwise (time) or not at all. */
const NOT_SHOWN = new Set(["msg", "message", "time", "timestamp", "at", "level", "pid", "hostname", "v"]);
/** A plain-text access log line for a health probe ("GET /health 200"). */
const PROBE_TEXT = /\b(GET|HEAD) \/health\b/;

interface Entry {
  text: string;
  probe: boolean;
}

function timeOf(record: Record<string, unknown>): string | undefined {
  const raw = record.time ?? record.timestamp ?? record.at;
  if (typeof raw !== "number" && typeof raw !== "string") return undefined;
  const at = new Date(raw);
  return Number.isNaN(at.getTime()) ? undefined : at.toISOString().slice(11, 19);
}

function levelOf(record: Record<string, unknown>): string | undefined {
  const level = record.level;
  if (typeof level === "number") return LEVELS[Math.floor(level / 10) * 10];
  if (typeof level === "string" && !ROUTINE_LEVELS.has(level.toLowerCase())) return level.toUpperCase();
  return undefined;
}

function errorOf(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (value && typeof value === "object" && typeof (value as { message?: unknown }).message === "string") return (value as { message: string }).message;
  return undefined;
}

/** The URL a request record names, at its top level or in pino-http's `req`. */
function urlOf(record: Record<string, unknown>): string | undefined {
  const req = record.req && typeof record.req === "object" ? (record.req as Record<string, unknown>) : record;
  const url = req.url ?? req.path;
  return typeof url === "string" ? url : undefined;
}

function fromRecord(record: Record<string, unknown>): Entry | undefined {
  const msg = record.msg ?? record.message;
  if (typeof msg !== "string") return undefined;
  const url = urlOf(record);
  const method = typeof record.method === "string" ? record.method : undefined;
  const parts = [timeOf(record), levelOf(record)];
  if (msg === "request" && method && url) parts.push(`${method} ${url}`);
  else {
    parts.push(msg);
    for (const [k, v] of Object.entries(record)) {
      if (NOT_SHOWN.has(k)) continue;
      if (k === "err" || k === "error") parts.push(`${k}: ${errorOf(v) ?? JSON.stringify(v)}`);
      else if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") parts.push(`${k}=${String(v)}`);
    }
  }
  // A failed probe is news: only the routine ones fold.
  const routine = parts[1] === undefined && !("err" in record) && !("error" in record);
  return { text: parts.filter((p) => p !== undefined).join(" "), probe: routine && url?.split("?")[0] === "/health" };
}

function entryOf(line: string): Entry {
  if (line.startsWith("{")) {
    try {
      const parsed: unknown = JSON.parse(line);
      const entry = parsed && typeof parsed === "object" && !Array.isArray(parsed) ? fromRecord(parsed as Record<string, unknown>) : undefined;
      if (entry) return entry;
    } catch {
      // Not JSON after all: shown as the text it is.
    }
  }
  return { text: line, probe: PROBE_TEXT.test(line) };
}

/** The last `max` entries of `lines` (oldest first, as the runtime gives them), newest last. */
export function readableLog(lines: readonly string[], max: number): string[] {
  const out: string[] = [];
  let probes = 0;
  const fold = () => {
    if (probes) out.push(`… ${probes} health check${probes === 1 ? "" : "s"}`);
    probes = 0;
  };
  for (const line of lines) {
    const entry = entryOf(line);
    if (entry.probe) probes++;
    else {
      fold();
      out.push(entry.text);
    }
  }
  fold();
  return out.slice(-max);
}

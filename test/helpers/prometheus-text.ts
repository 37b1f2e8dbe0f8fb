/**
 * A strict reader of the Prometheus text exposition format 0.0.4
 * (https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format): every line
 * is a HELP, a TYPE, another comment, blank, or a sample; every sample belongs to a family
 * declared with HELP and TYPE before it; no series appears twice; histograms are cumulative and
 * end in +Inf = _count. Anything else throws, naming the line.
 */

export type MetricType = "counter" | "gauge" | "histogram" | "summary" | "untyped";

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Family {
  name: string;
  help?: string;
  type?: MetricType;
  samples: Sample[];
}

export interface Exposition {
  families: Map<string, Family>;
  /** The value of one series (labels must match exactly); undefined if absent. */
  value(name: string, labels?: Record<string, string>): number | undefined;
  /** The sum over every series of `name` whose labels include `match`. */
  sum(name: string, match?: Record<string, string>): number;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(["counter", "gauge", "histogram", "summary", "untyped"]);
const SUFFIXES: Record<MetricType, string[]> = {
  counter: [""],
  gauge: [""],
  untyped: [""],
  histogram: ["_bucket", "_sum", "_count"],
  summary: ["", "_sum", "_count"],
};

export function parsePrometheusText(text: string): Exposition {
  const families = new Map<string, Family>();
  const seen = new Set<string>();
  const lines = text.split("\n");
  if (lines.at(-1) !== "") throw new Error("the exposition must end with a newline");
  lines.pop();
  const family = (name: string) => {
    let f = families.get(name);
    if (!f) families.set(name, (f = { name, samples: [] }));
    return f;
  };
  lines.forEach((line, i) => {
    const where = `line ${i + 1}: ${JSON.stringify(line)}`;
    if (line === "") return;
    if (line.startsWith("#")) {
      const m = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(line);
      if (!m) return; // another comment
      const [, kind, name, rest = ""] = m;
      if (!NAME.test(name!)) throw new Error(`bad metric name in ${where}`);
      const f = family(name!);
      if (f.samples.length) throw new Error(`${kind} after samples of ${name} in ${where}`);
      if (kind === "HELP") {
        if (f.help !== undefined) throw new Error(`second HELP for ${name} in ${where}`);
        if (/\\(?![\\n])/.test(rest)) throw new Error(`bad escape in HELP, ${where}`);
        f.help = rest;
      } else {
        if (f.type !== undefined) throw new Error(`second TYPE for ${name} in ${where}`);
        if (!TYPES.has(rest)) throw new Error(`unknown TYPE ${rest} in ${where}`);
        f.type = rest as MetricType;
      }
      return;
    }
    const sample = parseSample(line, where);
    const owner = ownerOf(sample.name, families);
    if (!owner) throw new Error(`sample without a TYPE declared before it, ${where}`);
    if (owner.help === undefined) throw new Error(`sample of ${owner.name} without HELP, ${where}`);
    const key = seriesKey(sample.name, sample.labels);
    if (seen.has(key)) throw new Error(`duplicate series ${key}, ${where}`);
    seen.add(key);
    if (sample.name.endsWith("_bucket") && owner.type === "histogram" && sample.labels.le === undefined) throw new Error(`bucket without le, ${where}`);
    owner.samples.push(sample);
  });
  for (const f of families.values()) if (f.type === "histogram") checkHistogram(f);

  const all = () => [...families.values()].flatMap((f) => f.samples);
  return {
    families,
    value(name, labels = {}) {
      return all().find((s) => s.name === name && seriesKey(s.name, s.labels) === seriesKey(name, labels))?.value;
    },
    sum(name, match = {}) {
      return all()
        .filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v))
        .reduce((a, s) => a + s.value, 0);
    },
  };
}

function parseSample(line: string, where: string): Sample {
  const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)(?: (-?\d+))?$/.exec(line);
  if (!m) throw new Error(`not a sample, ${where}`);
  const [, name, rawLabels, rawValue] = m;
  return { name: name!, labels: rawLabels ? parseLabels(rawLabels, where) : {}, value: parseValue(rawValue!, where) };
}

function parseLabels(raw: string, where: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 1;
  const end = raw.length - 1;
  while (i < end) {
    const eq = raw.indexOf("=", i);
    if (eq < 0) throw new Error(`label without '=', ${where}`);
    const name = raw.slice(i, eq);
    if (!LABEL_NAME.test(name)) throw new Error(`bad label name ${JSON.stringify(name)}, ${where}`);
    if (name in labels) throw new Error(`label ${name} twice, ${where}`);
    if (raw[eq + 1] !== '"') throw new Error(`label value not quoted, ${where}`);
    let j = eq + 2;
    let value = "";
    for (;;) {
      if (j >= end) throw new Error(`unterminated label value, ${where}`);
      const ch = raw[j]!;
      if (ch === '"') break;
      if (ch === "\n") throw new Error(`raw newline in label value, ${where}`);
      if (ch === "\\") {
        const next = raw[j + 1];
        if (next === "\\") value += "\\";
        else if (next === '"') value += '"';
        else if (next === "n") value += "\n";
        else throw new Error(`bad escape in label value, ${where}`);
        j += 2;
        continue;
      }
      value += ch;
      j++;
    }
    labels[name] = value;
    i = j + 1;
    if (raw[i] === ",") i++;
    else if (i !== end) throw new Error(`expected ',' or '}' after a label, ${where}`);
  }
  return labels;
}

/** A float as Go's strconv.ParseFloat reads it, which the format prescribes: NaN and Inf in any case. */
function parseValue(raw: string, where: string): number {
  if (/^[+]?inf(inity)?$/i.test(raw)) return Infinity;
  if (/^-inf(inity)?$/i.test(raw)) return -Infinity;
  if (/^nan$/i.test(raw)) return NaN;
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(raw)) throw new Error(`bad value ${raw}, ${where}`);
  return Number(raw);
}

function ownerOf(sampleName: string, families: Map<string, Family>): Family | undefined {
  for (const f of families.values()) {
    if (!f.type) continue;
    if (SUFFIXES[f.type].some((suffix) => `${f.name}${suffix}` === sampleName)) return f;
  }
  return undefined;
}

function seriesKey(name: string, labels: Record<string, string>): string {
  return `${name}{${Object.keys(labels)
    .sort()
    .map((k) => `${k}=${JSON.stringify(labels[k])}`)
    .join(",")}}`;
}

function checkHistogram(f: Family): void {
  const series = new Map<string, { buckets: Array<[number, number]>; count?: number; sum?: number }>();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const key = seriesKey("", rest);
    let h = series.get(key);
    if (!h) series.set(key, (h = { buckets: [] }));
    if (s.name.endsWith("_bucket")) h.buckets.push([parseValue(le!, `${f.name} le`), s.value]);
    else if (s.name.endsWith("_count")) h.count = s.value;
    else h.sum = s.value;
  }
  for (const [key, h] of series) {
    const where = `${f.name}${key}`;
    if (h.count === undefined || h.sum === undefined) throw new Error(`${where} lacks _count or _sum`);
    const buckets = [...h.buckets].sort((a, b) => a[0] - b[0]);
    if (buckets.at(-1)?.[0] !== Infinity) throw new Error(`${where} has no le="+Inf" bucket`);
    if (buckets.at(-1)![1] !== h.count) throw new Error(`${where}: +Inf bucket ${buckets.at(-1)![1]} is not _count ${h.count}`);
    for (let i = 1; i < buckets.length; i++) {
      if (buckets[i]![1] < buckets[i - 1]![1]) throw new Error(`${where}: buckets are not cumulative`);
    }
  }
}

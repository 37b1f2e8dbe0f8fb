import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { describe, it } from "node:test";
import { repoRoot } from "../helpers/paths.js";

/** The folders whose imports make the architecture (docs/architecture.md); tests may import anything. */
const SOURCE_DIRS = ["hypervisor", "proxy", "sandbox"];
/** The one module of the control plane the data plane may import: the error type. */
const PROXY_MAY_IMPORT = new Set(["hypervisor/errors.ts"]);
const TABLE_HEADING = "## Folders and what each may import";

const IMPORT =
  /(?:^|\n)\s*(?:import|export)\s+(type\s+)?([^;]*?)\s*from\s+["']([^"']+)["']|(?:^|\n)\s*import\s+["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)/g;

/** One relative import of a source file, as repository paths of .ts files. */
export interface Import {
  from: string;
  to: string;
  /** `import type …` or `import { type A, type B } …`: erased by the compiler, no dependency at run time. */
  typeOnly: boolean;
}

/** One row of the may-import table: the paths it covers and what they may import. */
export interface Row {
  /** Folders (ending in `/`) and files, as repository paths. */
  paths: string[];
  mayImport: { path: string; typesOnly: boolean }[];
  everything: boolean;
  holds: string;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(join(repoRoot, dir), { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(path);
    return e.name.endsWith(".ts") && !e.name.endsWith(".test.ts") ? [path] : [];
  });
}

/** `{ type A, type B }` names only types; `{ type A, B }` and `A` do not. */
function onlyTypes(clause: string): boolean {
  const braces = /^\{([^}]*)\}$/.exec(clause.trim());
  if (!braces) return false;
  const names = braces[1]!
    .split(",")
    .map((n) => n.trim())
    .filter((n) => n !== "");
  return names.length > 0 && names.every((n) => n.startsWith("type "));
}

/** Every relative import of a file's text. */
export function importsOf(file: string, text: string): Import[] {
  const found: Import[] = [];
  for (const m of text.matchAll(IMPORT)) {
    const spec = m[3] ?? m[4] ?? m[5]!;
    if (!spec.startsWith(".")) continue;
    const to = relative(repoRoot, resolve(repoRoot, dirname(file), spec)).replace(/\.js$/, ".ts");
    found.push({ from: file, to, typeOnly: m[3] !== undefined && (m[1] !== undefined || onlyTypes(m[2]!)) });
  }
  return found;
}

function allImports(): Import[] {
  return SOURCE_DIRS.flatMap(sourceFiles).flatMap((file) => importsOf(file, readFileSync(join(repoRoot, file), "utf8")));
}

function importGraph(imports: Import[]): Map<string, string[]> {
  const graph = new Map<string, string[]>(SOURCE_DIRS.flatMap(sourceFiles).map((f) => [f, []]));
  for (const i of imports) graph.get(i.from)!.push(i.to);
  return graph;
}

const CODE = /^`([^`]+)`$/;

/**
 * The table under TABLE_HEADING, read strictly: a row whose last cell says something this
 * reader does not know throws, so the words of the doc and the rule enforced cannot drift apart.
 */
export function parseTable(markdown: string): Row[] {
  const section = markdown.split(TABLE_HEADING)[1];
  if (section === undefined) throw new Error(`no "${TABLE_HEADING}" section`);
  const lines = section.split("\n");
  const header = lines.findIndex((l) => l.startsWith("| folder | holds | may import |"));
  if (header < 0) throw new Error("no `| folder | holds | may import |` table");
  const rows: Row[] = [];
  for (const line of lines.slice(header + 2)) {
    if (!line.startsWith("|")) break;
    const cells = line.slice(1, -1).split(" | ");
    if (cells.length !== 3) throw new Error(`a row without exactly three cells: ${line}`);
    const [folder, holds, may] = cells.map((c) => c.trim()) as [string, string, string];
    const paths = folder.split(",").map((p) => {
      const m = CODE.exec(p.trim());
      if (!m) throw new Error(`the folder cell names paths in backticks, not "${p.trim()}"`);
      return m[1]!;
    });
    const row: Row = { paths, mayImport: [], everything: false, holds };
    for (const item of may.split(",").map((i) => i.trim())) {
      const typesOnly = item.endsWith(" (types only)");
      const what = typesOnly ? item.slice(0, -" (types only)".length) : item;
      const code = CODE.exec(what);
      if (code) row.mayImport.push({ path: code[1]!, typesOnly });
      else if (what === "ground floor") row.mayImport.push({ path: "ground floor", typesOnly });
      else if (what === "everything" && !typesOnly) row.everything = true;
      else if (what === "nothing" && !typesOnly && may === "nothing") continue;
      else throw new Error(`"${item}" in the may-import cell of ${folder}: name \`paths\`, ground floor, everything or nothing`);
    }
    rows.push(row);
  }
  if (rows.length === 0) throw new Error("the may-import table has no rows");
  const ground = rows.filter((r) => r.holds.includes("ground floor"));
  if (ground.length !== 1) throw new Error("exactly one row must hold the ground floor");
  for (const row of rows) {
    row.mayImport = row.mayImport.flatMap((a) => (a.path === "ground floor" ? ground[0]!.paths.map((path) => ({ path, typesOnly: a.typesOnly })) : [a]));
  }
  return rows;
}

const covers = (path: string, file: string) => (path.endsWith("/") ? file.startsWith(path) : file === path);

/** The row a file belongs to: the one with the longest path covering it, so a subfolder follows its parent's row. */
export function rowOf(rows: Row[], file: string): Row | undefined {
  let best: { row: Row; length: number } | undefined;
  for (const row of rows) {
    for (const path of row.paths) {
      if (covers(path, file) && path.length > (best?.length ?? -1)) best = { row, length: path.length };
    }
  }
  return best?.row;
}

/** Every import the table does not allow, as `from → to` lines saying why. */
export function violations(rows: Row[], imports: Import[]): string[] {
  const found: string[] = [];
  for (const i of imports) {
    const from = rowOf(rows, i.from);
    if (from === undefined) {
      found.push(`${i.from} has no row in the table`);
      continue;
    }
    if (from.everything || rowOf(rows, i.to) === from) continue;
    const allowed = from.mayImport.filter((a) => covers(a.path, i.to));
    if (allowed.some((a) => !a.typesOnly)) continue;
    if (allowed.length > 0 && i.typeOnly) continue;
    found.push(`${i.from} → ${i.to}${allowed.length > 0 ? " (allowed for types only)" : ""}`);
  }
  return found;
}

/** The strongly connected components with more than one file, or a file importing itself (Tarjan). */
export function cycles(graph: Map<string, string[]>): string[][] {
  let index = 0;
  const order = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string) => {
    order.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!order.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, order.get(w)!));
      }
    }
    if (low.get(v) !== order.get(v)) return;
    const component: string[] = [];
    let w: string;
    do {
      w = stack.pop()!;
      onStack.delete(w);
      component.push(w);
    } while (w !== v);
    if (component.length > 1 || (graph.get(v) ?? []).includes(v)) found.push(component.sort());
  };
  for (const v of graph.keys()) if (!order.has(v)) visit(v);
  return found;
}

describe("the import structure", () => {
  const imports = allImports();
  const graph = importGraph(imports);
  const rows = parseTable(readFileSync(join(repoRoot, "docs/architecture.md"), "utf8"));

  it("reads the source tree", () => {
    assert.ok(graph.has("proxy/public-proxy.ts") && graph.has("hypervisor/daemon.ts"));
    assert.ok(graph.get("hypervisor/daemon.ts")!.includes("proxy/public-proxy.ts"), "the daemon's import of the proxy is seen");
  });

  it("keeps the data plane a library: proxy/ imports nothing of hypervisor/ but the error type", () => {
    const reaching = [...graph].flatMap(([file, targets]) =>
      file.startsWith("proxy/") ? targets.filter((t) => t.startsWith("hypervisor/") && !PROXY_MAY_IMPORT.has(t)).map((t) => `${file} → ${t}`) : [],
    );
    assert.deepEqual(reaching, []);
  });

  it("imports only what the table of docs/architecture.md allows, everywhere", () => {
    assert.deepEqual(violations(rows, imports), []);
  });

  it("has a row in the table for every source file and a file or folder for every path the table names", () => {
    assert.deepEqual(
      [...graph.keys()].filter((f) => rowOf(rows, f) === undefined),
      [],
      "give the new folder a row in docs/architecture.md",
    );
    const named = rows.flatMap((r) => [...r.paths, ...r.mayImport.map((a) => a.path)]);
    assert.deepEqual(
      [...new Set(named)].filter((p) => !existsSync(join(repoRoot, p))),
      [],
      "docs/architecture.md names a path that is gone",
    );
    const twice = rows.flatMap((r) => r.paths).filter((p, i, all) => all.indexOf(p) !== i);
    assert.deepEqual(twice, [], "a path in two rows");
  });

  it("has no import cycle anywhere", () => {
    assert.deepEqual(cycles(graph), []);
  });

  it("finds a cycle when there is one", () => {
    const looped = new Map([
      ["a.ts", ["b.ts"]],
      ["b.ts", ["c.ts"]],
      ["c.ts", ["a.ts"]],
      ["d.ts", ["a.ts"]],
    ]);
    assert.deepEqual(cycles(looped), [["a.ts", "b.ts", "c.ts"]]);
    assert.deepEqual(cycles(new Map([["self.ts", ["self.ts"]]])), [["self.ts"]]);
  });
});

describe("the may-import table's reader", () => {
  const doc = (rows: string) => `${TABLE_HEADING}\n\n| folder | holds | may import |\n|---|---|---|\n${rows}\n\nAfter the table.\n`;
  const table = parseTable(
    doc(
      [
        "| `low/`, `base.ts` | the ground floor | nothing |",
        "| `mid/` | the middle | ground floor, `lib/x.ts` |",
        "| `mid/deep/` | a subfolder with its own row | `mid/` |",
        "| `cli/` | a client | `mid/api.ts` (types only) |",
        "| `root.ts` | the wiring | everything |",
      ].join("\n"),
    ),
  );
  const imp = (from: string, to: string, typeOnly = false): Import => ({ from, to, typeOnly });

  it("allows a row's own files, its named paths and the ground floor", () => {
    assert.deepEqual(
      violations(table, [imp("mid/a.ts", "mid/b.ts"), imp("mid/a.ts", "lib/x.ts"), imp("mid/a.ts", "low/db.ts"), imp("mid/a.ts", "base.ts")]),
      [],
    );
  });

  it("refuses an import the row does not name, anywhere in the table", () => {
    assert.deepEqual(violations(table, [imp("low/db.ts", "mid/a.ts")]), ["low/db.ts → mid/a.ts"]);
    assert.deepEqual(violations(table, [imp("mid/a.ts", "lib/y.ts")]), ["mid/a.ts → lib/y.ts"]);
    assert.deepEqual(violations(table, [imp("mid/a.ts", "root.ts", true)]), ["mid/a.ts → root.ts"]);
    assert.deepEqual(violations(table, [imp("cli/c.ts", "low/db.ts")]), ["cli/c.ts → low/db.ts"]);
  });

  it("gives a subfolder its parent's row unless it has its own", () => {
    assert.deepEqual(violations(table, [imp("mid/sub/a.ts", "lib/x.ts")]), []);
    assert.deepEqual(violations(table, [imp("mid/deep/a.ts", "lib/x.ts")]), ["mid/deep/a.ts → lib/x.ts"]);
    assert.deepEqual(violations(table, [imp("mid/deep/a.ts", "mid/b.ts")]), []);
  });

  it("allows a types-only path to `import type` alone", () => {
    assert.deepEqual(violations(table, [imp("cli/c.ts", "mid/api.ts", true)]), []);
    assert.deepEqual(violations(table, [imp("cli/c.ts", "mid/api.ts")]), ["cli/c.ts → mid/api.ts (allowed for types only)"]);
  });

  it("lets the wiring import everything and names a file no row covers", () => {
    assert.deepEqual(violations(table, [imp("root.ts", "mid/deep/a.ts"), imp("stray/x.ts", "base.ts")]), ["stray/x.ts has no row in the table"]);
  });

  it("tells type-only imports from imports of values", () => {
    const text = [
      'import type { A } from "./a.js";',
      'import { type B, type C } from "./b.js";',
      'import { type D, E } from "./d.js";',
      'export { F } from "./f.js";',
      'import "./side.js";',
      'const g = await import("./g.js");',
    ].join("\n");
    assert.deepEqual(
      importsOf("hypervisor/x.ts", text).map((i) => [i.to, i.typeOnly]),
      [
        ["hypervisor/a.ts", true],
        ["hypervisor/b.ts", true],
        ["hypervisor/d.ts", false],
        ["hypervisor/f.ts", false],
        ["hypervisor/side.ts", false],
        ["hypervisor/g.ts", false],
      ],
    );
  });

  it("refuses a may-import cell it cannot read, rather than ignoring a word", () => {
    assert.throws(() => parseTable(doc("| `a/` | the ground floor | routing |")), /"routing"/);
    assert.throws(() => parseTable(doc("| a/ | the ground floor | nothing |")), /backticks/);
    assert.throws(() => parseTable(doc("| `a/` | the ground floor | everything (types only) |")), /everything \(types only\)/);
    assert.throws(() => parseTable(doc("| `a/` | the middle | nothing |")), /ground floor/);
  });
});

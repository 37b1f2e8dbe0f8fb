import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { describe, it } from "node:test";
import { repoRoot } from "../helpers/paths.js";

/** The folders whose imports make the architecture (docs/architecture.md); tests may import anything. */
const SOURCE_DIRS = ["hypervisor", "proxy", "sandbox"];
/** The one module of the control plane the data plane may import: the error type. */
const PROXY_MAY_IMPORT = new Set(["hypervisor/errors.ts"]);

const IMPORT = /(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)/g;

function sourceFiles(dir: string): string[] {
  return readdirSync(join(repoRoot, dir), { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(path);
    return e.name.endsWith(".ts") && !e.name.endsWith(".test.ts") ? [path] : [];
  });
}

/** Every relative import of every source file, as repository paths of .ts files. */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of SOURCE_DIRS.flatMap(sourceFiles)) {
    const text = readFileSync(join(repoRoot, file), "utf8");
    const targets: string[] = [];
    for (const m of text.matchAll(IMPORT)) {
      const spec = m[1] ?? m[2]!;
      if (!spec.startsWith(".")) continue;
      targets.push(relative(repoRoot, resolve(repoRoot, dirname(file), spec)).replace(/\.js$/, ".ts"));
    }
    graph.set(file, targets);
  }
  return graph;
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
  const graph = importGraph();

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

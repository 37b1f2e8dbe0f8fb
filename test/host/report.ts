// The rehearsal's evidence: one markdown file with each gate it proves (or fails), the commands
// it ran, their trimmed output and how long each took.
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { log, tail } from "./run.js";

export type Outcome = "pass" | "fail" | "skipped";

export interface Gate {
  title: string;
  /** The bootstrap checklist's gate or the runbook's rule it answers. */
  answers: string;
  outcome: Outcome;
  ms: number;
  /** Markdown: commands, output, figures. */
  body: string[];
  error?: string;
}

const MARK: Record<Outcome, string> = { pass: "✓", fail: "✗", skipped: "–" };

export class Report {
  readonly gates: Gate[] = [];
  readonly facts: [string, string][] = [];
  readonly skippedSteps: string[] = [];
  private current: Gate | undefined;

  constructor(private readonly started = new Date()) {}

  fact(name: string, value: string): void {
    this.facts.push([name, value]);
  }

  /**
   * Runs one gate: it passes when `body` returns without throwing. A failed gate is recorded
   * with its error; the caller decides whether the next gate can still run (`requires`).
   */
  async gate(title: string, answers: string, body: (g: Gate) => Promise<void> | void, requires: Gate[] = []): Promise<Gate> {
    const gate: Gate = { title, answers, outcome: "pass", ms: 0, body: [] };
    this.gates.push(gate);
    const missing = requires.filter((r) => r.outcome !== "pass");
    if (missing.length) {
      gate.outcome = "skipped";
      gate.error = `not reached: ${missing.map((r) => r.title).join(", ")} did not pass`;
      log(`– ${title}: ${gate.error}`);
      return gate;
    }
    log(`▶ ${title}`);
    const started = performance.now();
    this.current = gate;
    try {
      await body(gate);
    } catch (err) {
      gate.outcome = "fail";
      gate.error = err instanceof Error ? err.message : String(err);
    } finally {
      gate.ms = performance.now() - started;
      this.current = undefined;
    }
    log(`${MARK[gate.outcome]} ${title} (${seconds(gate.ms)})${gate.error ? `: ${gate.error.split("\n")[0]}` : ""}`);
    return gate;
  }

  /** A command and its output, in the gate being run. */
  command(command: string, output: string, ms: number, status: number | null = 0, lines = 25): void {
    const gate = this.current;
    if (!gate) return;
    const shown = tail(output.replace(/\x1b\[[0-9;]*[A-Za-z]/g, ""), lines);
    gate.body.push(`\`\`\`console\n# ${command}${status === 0 ? "" : `   (exit ${status})`}   [${seconds(ms)}]\n${shown}\n\`\`\``);
  }

  note(text: string): void {
    this.current?.body.push(text);
  }

  get passed(): boolean {
    return this.gates.every((g) => g.outcome === "pass");
  }

  write(path: string): void {
    const finished = new Date();
    const lines = [
      "# Runbook rehearsal on Debian 13",
      "",
      `Run ${this.started.toISOString()} – ${finished.toISOString()} (${seconds(finished.getTime() - this.started.getTime())}). ` +
        `Result: **${this.passed ? "every gate passed" : `${this.gates.filter((g) => g.outcome !== "pass").length} of ${this.gates.length} gates did not pass`}**.`,
      "",
      ...this.facts.map(([k, v]) => `- ${k}: ${v}`),
      "",
      "| | gate | answers | took |",
      "|---|---|---|---|",
      ...this.gates.map((g) => `| ${MARK[g.outcome]} | ${g.title} | ${g.answers} | ${seconds(g.ms)} |`),
      "",
    ];
    if (this.skippedSteps.length)
      lines.push("Runbook steps skipped as host only (they cannot run in a box):", "", ...this.skippedSteps.map((s) => `- ${s}`), "");
    for (const g of this.gates) {
      lines.push(`## ${MARK[g.outcome]} ${g.title}`, "", `Answers: ${g.answers}. Took ${seconds(g.ms)}.`, "");
      if (g.error) lines.push("```text", tail(g.error, 40), "```", "");
      lines.push(...g.body.flatMap((b) => [b, ""]));
    }
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, lines.join("\n"));
  }
}

export function seconds(ms: number): string {
  return ms < 10_000 ? `${(ms / 1000).toFixed(2)} s` : `${(ms / 1000).toFixed(1)} s`;
}

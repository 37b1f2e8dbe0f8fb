// deploy/RUNBOOK.md as the rehearsal reads it: its sections, their shell blocks, and each block's
// commands, so what runs in the box is the runbook's own text with only its placeholders filled.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { repoRoot } from "../helpers/paths.js";

export const RUNBOOK_PATH = join(repoRoot, "deploy/RUNBOOK.md");

/** One command of a block: a line, its continuation lines (`\`), or a heredoc with its body. */
export interface Command {
  /** As written in the runbook, placeholders unfilled. */
  text: string;
  /** The comment after the command on its first line, if any: what it prints, or a mark. */
  comment: string | undefined;
  /** Set when the comment says the command cannot run in a box (`# host only: <why>`). */
  hostOnly: string | undefined;
}

export interface Block {
  /** The section (## or ###) the block is in. */
  section: string;
  /** The stage (## heading) it belongs to. */
  chapter: string;
  /** The paragraph line right before the block, e.g. "Checks:". */
  lead: string;
  commands: Command[];
}

export interface Runbook {
  text: string;
  blocks: Block[];
  /** Prose steps marked `(host only: <name>)`, with the chapter they are in. */
  hostOnlySteps: { chapter: string; step: string }[];
}

export function readRunbook(path = RUNBOOK_PATH): Runbook {
  const text = readFileSync(path, "utf8");
  const lines = text.split("\n");
  const blocks: Block[] = [];
  const hostOnlySteps: Runbook["hostOnlySteps"] = [];
  const prose = new Map<string, string>();
  let chapter = "";
  let section = "";
  let lead = "";
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const heading = /^(#{2,3}) (.+)$/.exec(line);
    if (heading) {
      if (heading[1] === "##") chapter = heading[2]!;
      section = heading[2]!;
      continue;
    }
    if (line.startsWith("```sh")) {
      const body: string[] = [];
      for (i++; i < lines.length && !lines[i]!.startsWith("```"); i++) body.push(lines[i]!);
      blocks.push({ section, chapter, lead, commands: splitCommands(body) });
      continue;
    }
    if (line.startsWith("```")) {
      for (i++; i < lines.length && !lines[i]!.startsWith("```"); i++);
      continue;
    }
    prose.set(chapter, `${prose.get(chapter) ?? ""} ${line.trim()}`);
    if (line.trim()) lead = line.trim();
  }
  for (const [chapter, text] of prose) for (const m of text.matchAll(/\(host only: ([^)]+)\)/g)) hostOnlySteps.push({ chapter, step: m[1]! });
  return { text, blocks, hostOnlySteps };
}

/** The blocks of the chapters whose title starts with one of `prefixes` ("Stage 1", "Upgrading"...), in order. */
export function blocksOf(runbook: Runbook, prefix: string): Block[] {
  return runbook.blocks.filter((b) => b.chapter.startsWith(prefix));
}

/** The blocks of one section (## or ###) by its exact title's start. */
export function blocksOfSection(runbook: Runbook, prefix: string): Block[] {
  return runbook.blocks.filter((b) => b.section.startsWith(prefix));
}

function splitCommands(lines: string[]): Command[] {
  const commands: Command[] = [];
  for (let i = 0; i < lines.length; i++) {
    const first = lines[i]!;
    if (!first.trim() || first.trim().startsWith("#")) continue;
    const parts = [first];
    // A line ending in `\`, `&&`, `||` or `|` goes on, and so does a compound command (`for ...; do`
    // to `done`, `if` to `fi`, `{` to `}`) until it is closed.
    let open = depth(first);
    while ((open > 0 || /(\\|&&|\|\||\|)$/.test(stripComment(parts[parts.length - 1]!).code.trimEnd())) && i + 1 < lines.length) {
      parts.push(lines[++i]!);
      open += depth(lines[i]!);
    }
    const heredoc = /<<-?\s*'?(\w+)'?/.exec(stripComment(first).code);
    if (heredoc) {
      for (i++; i < lines.length; i++) {
        parts.push(lines[i]!);
        if (lines[i]!.trim() === heredoc[1]) break;
      }
    }
    // A comment ends the command's last line (after `\` nothing may follow), or a heredoc's first.
    const commented = heredoc ? 0 : parts.length - 1;
    const { code, comment } = stripComment(parts[commented]!);
    const text = parts.map((p, n) => (n === commented ? code.trimEnd() : p)).join("\n");
    const hostOnly = comment && /^host only: (.+)$/.exec(comment)?.[1];
    commands.push({ text, comment, hostOnly: hostOnly || undefined });
  }
  return commands;
}

/** How many compound commands a line opens (positive) or closes (negative), by its reserved words. */
function depth(line: string): number {
  const change: Record<string, number> = { do: 1, done: -1, then: 1, fi: -1, case: 1, esac: -1, "{": 1, "}": -1 };
  return stripComment(line)
    .code.split(/[\s;]+/)
    .reduce((sum, word) => sum + (change[word] ?? 0), 0);
}

/** Splits a shell line at its first comment: a `#` that starts a word outside quotes. */
export function stripComment(line: string): { code: string; comment: string | undefined } {
  let quote: string | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (quote) {
      if (c === quote) quote = undefined;
      else if (c === "\\" && quote === '"') i++;
    } else if (c === "\\") i++;
    else if (c === "'" || c === '"') quote = c;
    else if (c === "#" && (i === 0 || /\s/.test(line[i - 1]!)) && line[i - 1] !== "$") {
      return { code: line.slice(0, i), comment: line.slice(i + 1).trim() };
    }
  }
  return { code: line, comment: undefined };
}

/** Fills `<name>` placeholders; one the caller has no value for is an error, so the runbook cannot gain an unfilled one unnoticed. */
export function fill(text: string, values: Record<string, string>): string {
  return text.replace(/<([a-z][a-z-]*)>/g, (whole, name: string) => {
    const value = values[name];
    if (value === undefined) throw new Error(`the runbook's command has a placeholder the rehearsal does not fill: ${whole} in\n${text}`);
    return value;
  });
}

/** Every package the given blocks install with apt-get: what the cached box downloads ahead. */
export function aptPackages(blocks: Block[]): string[] {
  const names = new Set<string>();
  for (const block of blocks)
    for (const command of block.commands)
      for (const m of command.text.matchAll(/apt-get install ([^&|;\n]+)/g))
        for (const word of m[1]!.split(/\s+/)) if (word && !word.startsWith("-")) names.add(word);
  return [...names].sort();
}

// Running the runbook's shell blocks in the box, command by command, in one shell per block (a
// `cd` carries over to the next command, as in an operator's terminal).
import type { Box } from "./box.js";
import { fill, type Block } from "./runbook.js";
import type { Report } from "./report.js";

export interface CommandResult {
  text: string;
  status: number | null;
  output: string;
  ms: number;
}

/**
 * Known differences of this machine from a Debian 13 host, by the command they show in: the
 * command runs and its output goes into the report, but its failure does not stop the stage.
 */
export interface Deviation {
  command: RegExp;
  why: string;
}

export interface BlockRun {
  values: Record<string, string>;
  env: Record<string, string>;
  /** Given to the commands' stdin (the runbook pastes secrets this way). */
  input?: string;
  deviations?: readonly Deviation[];
  /** Stand-ins for host-only commands, by the command's program, run in their place (a certificate for certbot's). */
  standIns?: Record<string, () => Promise<void> | void>;
  timeoutMs?: number;
}

const BEGIN = "\u001ebegin";
const END = "\u001eend";

/**
 * Runs one block, each command in its own shell that starts where the previous one ended (its
 * working directory), as an operator's terminal would; throws at the first command that fails
 * (unless a deviation covers it), after recording every command run so far in the report. A
 * command commented `# nothing ...` passes when it prints nothing (grep finding nothing exits 1),
 * one commented with exactly what it prints passes on that output.
 * `after` may read a command's output to fill a placeholder of a later one (a generation's id).
 */
export async function runBlock(box: Box, block: Block, run: BlockRun, report: Report, after?: (result: CommandResult) => void): Promise<CommandResult[]> {
  const results: CommandResult[] = [];
  let cwd = "/root";
  for (const command of block.commands) {
    const first = command.text.split("\n")[0]!;
    if (command.hostOnly) {
      const standIn = run.standIns?.[command.text.split(/\s/)[0]!];
      const said = `\`${first}\` (host only: ${command.hostOnly})${standIn ? "; the rehearsal made a stand-in in its place" : ""}`;
      report.skippedSteps.push(`${block.section}: ${said}`);
      report.note(`Skipped: ${said}.`);
      if (standIn) await standIn();
      continue;
    }
    const text = fill(command.text, run.values);
    const expectNothing = /^nothing\b/.test(command.comment ?? "");
    const deviation = run.deviations?.find((d) => d.command.test(text));
    const script = [
      "exec 2>&1",
      `cd ${cwd}`,
      `printf '${BEGIN}\\n'`,
      `__hv_t0=$(date +%s%N)`,
      `{ ${text}\n}${run.input === undefined ? " </dev/null" : ""}`,
      `__hv_s=$?`,
      `printf '\\n${END} %s %s %s\\n' "$__hv_s" "$(( ($(date +%s%N) - __hv_t0) / 1000000 ))" "$PWD"`,
    ].join("\n");
    const ran = await box.execAsync(script, { input: run.input ?? "", env: run.env, timeoutMs: run.timeoutMs ?? 30 * 60_000 });
    const m = new RegExp(`${BEGIN}\\n([\\s\\S]*?)\\n${END} (\\d+) (\\d+) (.*)\\n`).exec(ran.stdout);
    if (!m)
      throw new Error(
        `\`${first}\` did not finish (exit ${ran.status}${ran.status === null ? ", timed out" : ""}):\n${(ran.stdout + ran.stderr).slice(-3000)}`,
      );
    const result = { text, status: Number(m[2]), output: m[1]!, ms: Number(m[3]) };
    cwd = m[4]!;
    results.push(result);
    report.command(text, result.output, result.ms, result.status);
    // A check whose comment is its expected output passes on that output (`is-enabled` prints
    // "masked" and exits 1).
    const passed = result.status === 0 || (expectNothing && result.output.trim() === "") || (!!command.comment && result.output.trim() === command.comment);
    if (!passed && deviation) report.note(`Exit ${result.status} here, a difference of this machine, not of the runbook: ${deviation.why}.`);
    else if (!passed) throw new Error(`\`${first}\` exited ${result.status}:\n${result.output.slice(-3000)}`);
    after?.(result);
  }
  return results;
}

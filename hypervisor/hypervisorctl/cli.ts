import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { UsageError, type Command, type OptionSpec } from "./command.js";
import { COMMANDS, GROUPS } from "./commands/index.js";
import { asLine } from "./format.js";
import { GLOBAL_OPTIONS, parserOptions } from "./options.js";
import { closest } from "./suggest.js";
import { VERSION } from "./version.js";
import { ApiError, ConnectionError, OperatorConnection, type OperatorTarget } from "./operator-connection.js";

export interface CliIo {
  env: NodeJS.ProcessEnv;
  /** Whether stdout is a terminal. */
  tty?: boolean;
  stdout(text: string): void;
  stderr(text: string): void;
}

/** The daemon's default HYPERVISOR_STATE_DIR (./var) as `npm start` resolves it: from the checkout this file is compiled into. */
const DEFAULT_STATE_DIR = fileURLToPath(new URL("../../../var", import.meta.url));

/** Exit codes: success, the operation (or a user in it) failed, the command line was wrong. */
export const EXIT = { ok: 0, failed: 1, usage: 2 } as const;

/** Every option any command takes; which command may use which is checked after parsing. */
const PARSE_OPTIONS = parserOptions([...GLOBAL_OPTIONS, ...COMMANDS.flatMap((c) => c.options ?? [])]);

/** Runs one command line; returns the exit code. */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  let command: Command | undefined;
  let json = false;
  try {
    if (argv.some((a) => a === "--token" || a.startsWith("--token="))) {
      throw new UsageError("a token is never taken on the command line (it would show in ps and shell history): put it in a file and pass --token-file FILE");
    }
    // Alone only: `generations add --version V` takes a value.
    if (argv.length === 1 && (argv[0] === "--version" || argv[0] === "-V")) {
      io.stdout(`hypervisorctl ${VERSION}\n`);
      return EXIT.ok;
    }
    const parsed = parse(argv);
    const { positionals, rest, values, given } = parsed;
    json = values.json === true;
    if (positionals[0] === "help") return help(positionals.slice(1), io);
    if (values.help && positionals.length === 1 && GROUPS[positionals[0]!]) return help(positionals, io);
    const resolved = resolveCommand(positionals);
    if (!resolved) {
      if (values.help) return help([], io);
      if (positionals.length === 0) {
        io.stderr(mainHelp());
        return EXIT.usage;
      }
      throw new UsageError(`unknown command '${positionals[0]}'${didYouMean(positionals)}`);
    }
    if ("group" in resolved) {
      if (values.help) return help([resolved.group], io);
      throw new UsageError(resolved.problem, resolved.group);
    }
    command = resolved.command;
    if (values.help) {
      io.stdout(commandHelp(command));
      return EXIT.ok;
    }
    const allowed = new Set([...GLOBAL_OPTIONS, ...(command.options ?? [])].map((o) => o.name));
    for (const name of given) if (!allowed.has(name)) throw new UsageError(`${command.name} does not take --${name}`, command.name);
    const args = resolved.args;
    const [min, max] = command.args;
    if (args.length < min)
      throw new UsageError(`${command.name} needs ${min === max ? min : `at least ${min}`} argument${min === 1 ? "" : "s"}: ${command.usage}`, command.name);
    if (args.length > max) throw new UsageError(`unexpected argument '${args[max]}' for ${command.name}`, command.name);
    if (rest.length && !command.rest) throw new UsageError(`${command.name} takes no arguments after --`, command.name);

    const api = new OperatorConnection(target(values, io.env));
    return await command.run({ api, json, out: io.stdout, tty: io.tty === true }, { args, rest, options: values });
  } catch (err) {
    return report(err, io, command, json);
  }
}

function parse(argv: string[]) {
  let result;
  try {
    result = parseArgs({ args: argv, options: PARSE_OPTIONS, allowPositionals: true, strict: true, tokens: true });
  } catch (err) {
    throw new UsageError((err as Error).message.replace(/\. To specify a positional argument.*$/s, ""));
  }
  const { values } = result;
  // Typed loosely: with a widened options object, @types/node narrows option tokens away.
  const tokens = result.tokens as Array<{ kind: string; index: number; name?: string; value?: string }>;
  const terminator = tokens.find((t) => t.kind === "option-terminator")?.index ?? Infinity;
  const positionals: string[] = [];
  const rest: string[] = [];
  for (const t of tokens) if (t.kind === "positional") (t.index > terminator ? rest : positionals).push(t.value!);
  const given = new Set(tokens.filter((t) => t.kind === "option").map((t) => t.name!));
  return { values: values as Record<string, string | boolean | undefined>, positionals, rest, given };
}

type Resolved = { command: Command; args: string[] } | { group: string; problem: string };

/** `swap` → swap; `sandboxes` → sandboxes list; `sandboxes start a live` → sandboxes start. */
function resolveCommand(positionals: string[]): Resolved | undefined {
  const [first, second] = positionals;
  if (!first) return undefined;
  const group = GROUPS[first];
  if (!group) {
    const command = COMMANDS.find((c) => c.name === first);
    return command && { command, args: positionals.slice(1) };
  }
  const third = positionals[2];
  const deep = third === undefined ? undefined : COMMANDS.find((c) => c.name === `${first} ${second} ${third}`);
  if (deep) return { command: deep, args: positionals.slice(3) };
  const sub = second === undefined ? undefined : COMMANDS.find((c) => c.name === `${first} ${second}`);
  if (sub) return { command: sub, args: positionals.slice(2) };
  const deeper = COMMANDS.filter((c) => c.name.startsWith(`${first} ${second} `)).map((c) => c.name.split(" ")[2]);
  if (deeper.length) return { group: first, problem: `${first} ${second} needs a command: ${deeper.join(", ")}` };
  const subs = subcommands(first).join(", ");
  if (second !== undefined) {
    const meant = closest(second, subcommands(first));
    return { group: first, problem: `unknown ${first} command '${second}' (${meant ? `did you mean '${first} ${meant}'? ` : ""}${subs})` };
  }
  if (group.default) return { command: COMMANDS.find((c) => c.name === `${first} ${group.default}`)!, args: [] };
  return { group: first, problem: `${first} needs a command: ${subs}` };
}

/** `user list` → " (did you mean 'hypervisorctl users list'?)", or "" when nothing is close. */
function didYouMean(positionals: string[]): string {
  const [first, ...more] = positionals;
  const tops = [...new Set(COMMANDS.map((c) => c.name.split(" ")[0]!))];
  const meant = first === undefined ? undefined : closest(first, tops);
  if (!meant) return "";
  // The rest of the line is kept when it makes a command with the right word first.
  const resolved = resolveCommand([meant, ...more]);
  return ` (did you mean 'hypervisorctl ${resolved && "command" in resolved ? [meant, ...more].join(" ") : meant}'?)`;
}

function subcommands(group: string): string[] {
  return COMMANDS.filter((c) => c.name.startsWith(`${group} `)).map((c) => c.name.slice(group.length + 1));
}

/** Where to connect. The token is read from a file only, never from argv. */
function target(values: Record<string, string | boolean | undefined>, env: NodeJS.ProcessEnv): OperatorTarget {
  const socket = values.socket as string | undefined;
  const url = values.url as string | undefined;
  if (socket !== undefined && url !== undefined) throw new UsageError("give --socket or --url, not both");
  if (url === undefined) {
    // As the daemon finds it (config.ts); its default state dir, ./var, is the one `npm start`
    // makes beside dist/, so it is found from there, not from wherever this runs.
    if (socket !== undefined) return { socketPath: resolve(socket), origin: "--socket" };
    if (env.HYPERVISOR_OPERATOR_SOCKET) return { socketPath: resolve(env.HYPERVISOR_OPERATOR_SOCKET), origin: "HYPERVISOR_OPERATOR_SOCKET" };
    if (env.HYPERVISOR_STATE_DIR) return { socketPath: join(resolve(env.HYPERVISOR_STATE_DIR), "operator.sock"), origin: "HYPERVISOR_STATE_DIR" };
    return { socketPath: join(DEFAULT_STATE_DIR, "operator.sock"), origin: "the default state dir, ./var beside the hypervisor's dist/" };
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UsageError(`--url must be a URL like http://127.0.0.1:9090, not '${url}'`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") throw new UsageError(`--url must be http:// or https://, not '${parsed.protocol}'`);
  const file = (values["token-file"] as string | undefined) ?? env.HYPERVISOR_OPERATOR_TOKEN_FILE;
  if (!file) throw new UsageError("--url needs the operator token: --token-file FILE or HYPERVISOR_OPERATOR_TOKEN_FILE");
  let token: string;
  try {
    token = readFileSync(file, "utf8").trim();
  } catch (err) {
    throw new ConnectionError(`cannot read the token file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (!token) throw new ConnectionError(`the token file ${file} is empty`);
  return { url: parsed, token };
}

function report(err: unknown, io: CliIo, command: Command | undefined, json: boolean): number {
  if (err instanceof UsageError) {
    const about = err.command ?? command?.name;
    io.stderr(`error: ${err.message}\nRun 'hypervisorctl ${about ? `${about} ` : ""}--help' for usage.\n`);
    return EXIT.usage;
  }
  if (err instanceof ApiError) {
    // A script reading --json output gets the API's error body too (e.g. a failed swap's results).
    if (json && err.raw) io.stdout(asLine(err.raw));
    // The API says how to confirm over HTTP (operator/confirm.ts); here it is a flag.
    const message =
      err.code === "confirmation_required"
        ? err.message.replace(/\(send it again with \?confirm=true to go ahead\)$/, "(run it again with --yes to go ahead)")
        : err.message;
    io.stderr(`error: ${err.code}: ${message} (request ${err.requestId})\n`);
    return EXIT.failed;
  }
  if (err instanceof ConnectionError) {
    io.stderr(`error: ${err.message}\n`);
    return EXIT.failed;
  }
  io.stderr(`error: internal: ${err instanceof Error ? err.message : String(err)}\n`);
  return EXIT.failed;
}

// --- help ----------------------------------------------------------------------------------------

function help(words: string[], io: CliIo): number {
  if (words.length === 0) {
    io.stdout(mainHelp());
    return EXIT.ok;
  }
  const resolved = resolveCommand(words);
  if (resolved && "command" in resolved && resolved.args.length === 0 && (words.length > 1 || !GROUPS[words[0]!])) {
    io.stdout(commandHelp(resolved.command));
    return EXIT.ok;
  }
  if (GROUPS[words[0]!] && words.length === 1) {
    io.stdout(groupHelp(words[0]!));
    return EXIT.ok;
  }
  io.stderr(`error: no help for '${words.join(" ")}': unknown command\nRun 'hypervisorctl --help' for the commands.\n`);
  return EXIT.usage;
}

function optionLines(options: OptionSpec[]): string {
  const w = Math.max(...options.map((o) => o.flag.length));
  return options.map((o) => `  ${o.flag.padEnd(w)}  ${o.help}`).join("\n");
}

/** `  usage  summary` rows; a usage too long for the column puts its summary on the next line. */
function commandList(commands: Command[]): string {
  const w = Math.min(USAGE_COLUMN, Math.max(...commands.map((c) => c.usage.length)));
  return commands.map((c) => (c.usage.length > w ? `  ${c.usage}\n  ${"".padEnd(w)}  ${c.summary}` : `  ${c.usage.padEnd(w)}  ${c.summary}`)).join("\n");
}

const USAGE_COLUMN = 34;

function mainHelp(): string {
  return `hypervisorctl: drive the hypervisor's operator API from a shell

Usage: hypervisorctl [options] COMMAND [ARGS]

Commands:
${commandList(COMMANDS)}

Options:
${optionLines(GLOBAL_OPTIONS)}

Exit codes: 0 success; 1 the operation, or any user in it, failed (API errors print
'error: CODE: MESSAGE (request ID)' on stderr); 2 usage error.
Run 'hypervisorctl COMMAND --help' for a command's options, 'hypervisorctl --version' for the version.
`;
}

function groupHelp(group: string): string {
  const fallback = GROUPS[group]!.default;
  return `hypervisorctl ${group}: ${GROUPS[group]!.summary}

Commands:
${commandList(COMMANDS.filter((c) => c.name.startsWith(`${group} `)))}
${fallback ? `\n'hypervisorctl ${group}' alone means '${group} ${fallback}'.\n` : ""}
Options:
${optionLines(GLOBAL_OPTIONS)}

Run 'hypervisorctl ${group} COMMAND --help' for a command's options.
`;
}

function commandHelp(c: Command): string {
  const options = [...(c.options ?? []), ...GLOBAL_OPTIONS];
  return `Usage: hypervisorctl [options] ${c.usage}

${c.summary[0]!.toUpperCase()}${c.summary.slice(1)}.
${c.details?.length ? `\n${c.details.join("\n")}\n` : ""}
Options:
${optionLines(options)}
`;
}

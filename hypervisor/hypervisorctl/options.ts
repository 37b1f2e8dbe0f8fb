import type { ParseArgsConfig } from "node:util";
import { UsageError, type Invocation, type OptionSpec } from "./command.js";

/** Options every command takes: where the operator API is, and how to print. */
export const GLOBAL_OPTIONS: OptionSpec[] = [
  {
    name: "socket",
    flag: "--socket PATH",
    help: "operator unix socket (default: $HYPERVISOR_OPERATOR_SOCKET, else $HYPERVISOR_STATE_DIR/operator.sock, else var/operator.sock of the hypervisor's own directory, as npm start makes it)",
  },
  { name: "url", flag: "--url URL", help: "the operator TCP listener instead, e.g. http://127.0.0.1:9090" },
  {
    name: "token-file",
    flag: "--token-file FILE",
    help: "bearer token for --url (default: $HYPERVISOR_OPERATOR_TOKEN_FILE); a token is never taken on the command line",
  },
  { name: "json", flag: "--json", help: "print the API's JSON response, for scripts" },
  { name: "help", flag: "-h, --help", help: "show help (also: hypervisorctl COMMAND --help)" },
];

/** Whether an option takes a value: its help form ends in one (`--tail N`), not in a flag (`-f, --follow`). */
export function takesValue(o: OptionSpec): boolean {
  return !o.flag.split(" ").at(-1)!.startsWith("-");
}

/** The long flags of an option's help form: `-f, --follow` → `--follow`. */
export function longFlags(options: OptionSpec[]): string[] {
  return options.flatMap((o) => o.flag.match(/--[a-z-]+/g) ?? []);
}

/** The parser's table of every option any command takes, read off their help forms; which command may use which is checked after parsing. */
export function parserOptions(options: OptionSpec[]): NonNullable<ParseArgsConfig["options"]> {
  const table: NonNullable<ParseArgsConfig["options"]> = {};
  for (const o of options) {
    const short = /^-([a-zA-Z]),/.exec(o.flag)?.[1];
    table[o.name] = { type: takesValue(o) ? "string" : "boolean", ...(short ? { short } : {}) };
  }
  return table;
}

/** A step that deletes data or leaves users without a way back goes ahead only with it (the API's ?confirm=true). */
export const YES: OptionSpec = { name: "yes", flag: "--yes", help: "go ahead with a step that cannot be undone (without it the API says what would follow)" };

/** `?confirm=true` with --yes: how the API is told a destructive step is meant. */
export function confirmQuery(inv: Invocation): string {
  return inv.options.yes === true ? "confirm=true" : "";
}

// --- reading a command's options and arguments ------------------------------------------------

export function stringOption(inv: Invocation, name: string): string | undefined {
  const v = inv.options[name];
  return typeof v === "string" ? v : undefined;
}

export function flag(inv: Invocation, name: string): boolean {
  return inv.options[name] === true;
}

export function positiveInt(value: string, what: string, command: string): number {
  if (!/^[1-9]\d{0,9}$/.test(value)) throw new UsageError(`${what} must be a positive integer, not '${value}'`, command);
  return Number(value);
}

export function intOption(inv: Invocation, name: string, command: string): number | undefined {
  const v = stringOption(inv, name);
  return v === undefined ? undefined : positiveInt(v, `--${name}`, command);
}

/** `--users a,b`: the names, or undefined for every user. */
export function usersOption(inv: Invocation, command: string): string[] | undefined {
  const v = stringOption(inv, "users");
  if (v === undefined) return undefined;
  const users = v
    .split(",")
    .map((u) => u.trim())
    .filter(Boolean);
  if (!users.length) throw new UsageError("--users needs at least one user name (a,b,c)", command);
  return users;
}

/** A ROLE argument: live or dev. */
export function roleArg(role: string, command: string): "live" | "dev" {
  if (role !== "live" && role !== "dev") throw new UsageError(`ROLE must be live or dev, not '${role}'`, command);
  return role;
}

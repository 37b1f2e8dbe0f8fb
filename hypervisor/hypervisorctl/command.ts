import { setTimeout as sleep } from "node:timers/promises";
import { asLine, time } from "./format.js";
import { ApiError, ConnectionError, type ApiResponse, type OperatorConnection } from "./operator-connection.js";

/** Bad command line: exit code 2, with a pointer to --help. */
export class UsageError extends Error {
  override name = "UsageError";
  constructor(
    message: string,
    /** The command whose help to point at, if known. */
    readonly command?: string,
  ) {
    super(message);
  }
}

export interface OptionSpec {
  name: string;
  /** As shown in help, e.g. `--users a,b` or `-f, --follow`: a last word not starting with `-` is its value. */
  flag: string;
  help: string;
}

export interface CommandContext {
  api: OperatorConnection;
  json: boolean;
  out(text: string): void;
  /** Whether stdout is a terminal: screen control codes go only there, never into a pipe or file. */
  tty?: boolean;
}

export interface Invocation {
  /** Positional arguments after the command's name. */
  args: string[];
  /** Arguments after `--`. */
  rest: string[];
  options: Record<string, string | boolean | undefined>;
}

export interface Command {
  /** `swap`, `sandboxes start`. */
  name: string;
  usage: string;
  summary: string;
  /** More help text, shown by `--help` only. */
  details?: string[];
  options?: OptionSpec[];
  /** Positional arguments, at least and at most. */
  args: [number, number];
  /** Whether it takes `-- CMD...`. */
  rest?: boolean;
  run(ctx: CommandContext, inv: Invocation): Promise<number>;
}

/**
 * One API call and its answer: with --json the API's JSON as is, otherwise what `render` makes
 * of it. Always exit 0, because the connection throws an error answer as an ApiError.
 */
export async function call<T>(
  ctx: CommandContext,
  method: "GET" | "POST" | "DELETE",
  path: string,
  body: unknown,
  render: (res: ApiResponse<T>) => string,
): Promise<number> {
  const res = await ctx.api.json<T>(method, path, body);
  ctx.out(ctx.json ? asLine(res.raw) : render(res));
  return 0;
}

export const WATCH: OptionSpec = { name: "watch", flag: "--watch", help: "redraw every 2 s until Ctrl-C (not with --json)" };

const WATCH_EVERY_MS = 2000;

/**
 * With --watch: the command again every 2 s until Ctrl-C. On a terminal each frame is drawn whole
 * over the last (ECMA-48 "cursor home" and "erase display"); into a pipe or a file the frames
 * follow one another, each under its heading, with no control codes. A failed round shows its
 * error and the watch goes on, so a daemon restart does not end it.
 */
export async function watching(ctx: CommandContext, inv: Invocation, command: string, once: (ctx: CommandContext) => Promise<number>): Promise<number> {
  if (inv.options.watch !== true) return once(ctx);
  if (ctx.json) throw new UsageError("--watch does not apply to --json (a script can call the command in a loop)", command);
  for (;;) {
    let frame = "";
    const capture: CommandContext = { ...ctx, out: (text) => void (frame += text) };
    try {
      await once(capture);
    } catch (err) {
      if (!(err instanceof ApiError) && !(err instanceof ConnectionError)) throw err;
      frame += `error: ${err instanceof ApiError ? `${err.code}: ` : ""}${err.message}\n`;
    }
    const heading = `${time(new Date().toISOString())}  hypervisorctl ${command}, every ${WATCH_EVERY_MS / 1000} s (Ctrl-C to stop)\n\n`;
    ctx.out(ctx.tty ? `\x1b[H\x1b[2J${heading}${frame}` : `${heading}${frame}\n`);
    await sleep(WATCH_EVERY_MS);
  }
}

import type { z } from "@hono/zod-openapi";
import type { GenerationListResponse, GenerationResponse, GenerationSchema } from "../../operator/generation-routes.js";
import { existsSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { call, UsageError, type Command } from "../command.js";
import { ApiError } from "../operator-connection.js";
import { clip, table, time } from "../format.js";
import { confirmQuery, positiveInt, stringOption, YES } from "../options.js";

export const GENERATION_COMMANDS: Command[] = [
  {
    name: "generations list",
    usage: "generations [list]",
    summary: "every generation with its state and how many users run it",
    args: [0, 0],
    async run(ctx) {
      const count = (g: z.infer<typeof GenerationSchema>, role: "live" | "dev") => String(g.runsIn.filter((p) => p.role === role).length);
      return call<z.infer<typeof GenerationListResponse>>(ctx, "GET", "/generations", undefined, (res) =>
        table(
          ["ID", "STATE", "VERSION", "RUNTIME", "LIVE", "DEV", "CREATED", "SOURCE"],
          res.body.generations.map((g) => [
            String(g.id),
            g.state,
            g.version,
            g.runtime,
            count(g, "live"),
            count(g, "dev"),
            time(g.createdAt),
            clip(g.image ? `${g.image} (${g.imageId ?? "?"})` : (g.command ?? []).join(" "), 100),
          ]),
        ),
      );
    },
  },
  {
    name: "generations add",
    usage: "generations add IMAGE | --version V -- CMD...",
    summary: "record a new candidate generation",
    details: [
      "podman runtime: IMAGE is a reference in the local image store (never pulled); it is",
      "resolved to its immutable image ID. Adding an image ID already recorded answers that one.",
      "process runtime: --version V names it and everything after -- is the command to run; the",
      "program and any file it is given are absolute paths (the sandbox runs in a directory of its own).",
      "",
      "Examples:",
      "  hypervisorctl generations add localhost/hypervisor-sandbox:2024-05-01",
      "  hypervisorctl generations add --version 2 -- /usr/bin/node /srv/sandbox/server.js --version=2",
    ],
    options: [{ name: "version", flag: "--version V", help: "the version of a process-runtime generation (needs -- CMD...)" }],
    args: [0, 1],
    rest: true,
    async run(ctx, inv) {
      const version = stringOption(inv, "version");
      let body: { image: string } | { command: string[]; version: string };
      if (inv.args.length === 1 && version === undefined && inv.rest.length === 0) body = { image: inv.args[0]! };
      else if (inv.args.length === 0 && version !== undefined && inv.rest.length > 0) body = { command: inv.rest, version };
      else throw new UsageError("give either IMAGE, or --version V -- CMD...", "generations add");
      if ("command" in body) refuseRelative(body.command);
      try {
        return await call<z.infer<typeof GenerationResponse>>(ctx, "POST", "/generations", body, (res) => {
          const g = res.body.generation;
          return res.status === 201
            ? `generation ${g.id} recorded as ${g.state}: version ${g.version} (${g.runtime})\n`
            : `generation ${g.id} already records this image (${g.imageId ?? g.image}); state ${g.state}\n`;
        });
      } catch (err) {
        throw otherRuntime(err) ?? err;
      }
    },
  },
  ...(["known-good", "bad"] as const).map((state): Command => ({
    name: `generations ${state}`,
    usage: `generations ${state} ID`,
    summary: state === "known-good" ? "mark a generation known-good (a rollback target)" : "mark a generation bad (never deployed again)",
    ...(state === "bad" && {
      details: ["The only known-good generation, while users run it live, is marked bad only with --yes: their rollback would have nowhere to go."],
      options: [YES],
    }),
    args: [1, 1],
    async run(ctx, inv) {
      const id = positiveInt(inv.args[0]!, "ID", `generations ${state}`);
      const query = confirmQuery(inv);
      return call<z.infer<typeof GenerationResponse>>(
        ctx,
        "POST",
        `/generations/${id}/${state}${query ? `?${query}` : ""}`,
        undefined,
        (res) => `generation ${id} is now ${res.body.generation.state}\n`,
      );
    },
  })),
];

/**
 * The API refused the form this runtime does not take: said as what to type here, not as the
 * API's JSON shape. Anything else passes through as the API's error.
 */
function otherRuntime(err: unknown): UsageError | undefined {
  if (!(err instanceof ApiError) || err.code !== "bad_request") return undefined;
  let details: { runtime?: unknown; takes?: unknown } | undefined;
  try {
    details = (JSON.parse(err.raw) as { error?: { details?: { runtime?: unknown; takes?: unknown } } }).error?.details;
  } catch {
    return undefined;
  }
  if (details?.takes === "command") {
    return new UsageError(
      `this hypervisor runs the ${String(details.runtime)} runtime, which takes a command, not an image: ` +
        "hypervisorctl generations add --version V -- /absolute/path/to/program ARGS...",
      "generations add",
    );
  }
  if (details?.takes === "image") {
    return new UsageError(
      `this hypervisor runs the ${String(details.runtime)} runtime, which takes an image, not a command: hypervisorctl generations add IMAGE`,
      "generations add",
    );
  }
  return undefined;
}

/**
 * A process sandbox runs in its own directory: a path relative to here would be looked up there,
 * and fail only at deploy. The API refuses it too; here the message can name the absolute path.
 */
function refuseRelative(command: string[]): void {
  for (const [i, arg] of command.entries()) {
    const looksLikePath = i === 0 || /^\.\.?\//.test(arg) || /^[\w@.+-]+(\/[\w@.+-]+)+\/?$/.test(arg);
    if (!looksLikePath || isAbsolute(arg)) continue;
    const here = resolve(arg);
    const hint = existsSync(here) ? ` (did you mean ${here}?)` : i === 0 ? " (e.g. /usr/bin/node; `command -v NAME` finds it)" : "";
    throw new UsageError(
      `'${arg}' is a relative path: the sandbox runs in its own directory, so give the ${i === 0 ? "program" : "path"} as an absolute path${hint}`,
      "generations add",
    );
  }
}

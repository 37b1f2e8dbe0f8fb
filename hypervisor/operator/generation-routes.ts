import { createRoute, z } from "@hono/zod-openapi";
import { HypervisorError } from "../errors.js";
import { wrongRuntime } from "../generations/generation-store.js";
import type { Services } from "../services.js";
import { audited } from "./audited.js";
import { ConfirmQuery, requireConfirmation } from "./confirm.js";
import type { OperatorApp } from "./operator-env.js";
import { errorResponses } from "./schemas.js";

export const GenerationSchema = z
  .object({
    id: z.number(),
    runtime: z.enum(["podman", "process", "fake"]),
    image: z.string().nullable(),
    imageId: z.string().nullable(),
    command: z.array(z.string()).nullable(),
    version: z.string(),
    state: z.enum(["candidate", "known-good", "bad"]),
    createdAt: z.string(),
    stateChangedAt: z.string(),
    runsIn: z.array(z.object({ user: z.string(), slot: z.enum(["a", "b"]), role: z.enum(["live", "dev"]), since: z.string() })),
  })
  .openapi("Generation");

export const GenerationListResponse = z.object({ generations: z.array(GenerationSchema) });
export const GenerationResponse = z.object({ generation: GenerationSchema });

const AddGeneration = z.union([
  z
    .object({
      image: z
        .string()
        .min(1)
        .max(512)
        .regex(/^[\w./:@-]+$/, "an image reference"),
    })
    .strict(),
  z
    .object({
      command: z.array(z.string().min(1).max(4096)).min(1).max(64),
      version: z
        .string()
        .min(1)
        .max(64)
        .regex(/^[\x21-\x7e]+$/, "printable ASCII, no spaces"),
    })
    .strict(),
]);

const GenerationId = z.object({ id: z.coerce.number().int().positive().openapi({ example: 2 }) });

const listRoute = createRoute({
  method: "get",
  path: "/generations",
  summary: "Every generation with its state and where it runs",
  responses: {
    200: { description: "generations", content: { "application/json": { schema: GenerationListResponse } } },
    ...errorResponses(401),
  },
});

const addRoute = createRoute({
  method: "post",
  path: "/generations",
  summary: "Record a generation: an image in the local store (podman), resolved to its immutable ID, or a command (process)",
  request: { body: { required: true, content: { "application/json": { schema: AddGeneration } } } },
  responses: {
    201: { description: "recorded as candidate", content: { "application/json": { schema: GenerationResponse } } },
    200: { description: "this image ID is already recorded", content: { "application/json": { schema: GenerationResponse } } },
    ...errorResponses(400, 401, 404, 413, 503),
  },
});

const markRoute = createRoute({
  method: "post",
  path: "/generations/{id}/{state}",
  summary: "Mark a generation known-good or bad",
  description:
    "Marking bad the only known-good generation while users run it live leaves them nothing to roll back to: " +
    "that needs confirm=true, or the call answers 409 confirmation_required naming those users.",
  request: { params: GenerationId.extend({ state: z.enum(["known-good", "bad"]) }), query: ConfirmQuery },
  responses: {
    200: { description: "marked", content: { "application/json": { schema: GenerationResponse } } },
    ...errorResponses(400, 401, 404, 409, 503),
  },
});

/**
 * A process sandbox runs in a directory of its own, so a relative program or script path would
 * be looked up there and fail only at deploy: refused here, when it is added. An argument counts
 * as a path when it starts with ./ or ../, or is words joined by / (not a flag, a URL or key=value).
 */
function refuseRelativePaths(command: string[]): void {
  const [program, ...args] = command as [string, ...string[]];
  if (!program.startsWith("/")) {
    throw new HypervisorError(
      "validation_failed",
      `command: the program '${program.slice(0, 200)}' must be an absolute path (a sandbox runs in its own directory, where PATH and relative paths do not reach): e.g. /usr/bin/node`,
      { argument: 0 },
    );
  }
  const index = args.findIndex((a) => /^\.\.?\//.test(a) || /^[\w@.+-]+(\/[\w@.+-]+)+\/?$/.test(a));
  if (index >= 0) {
    throw new HypervisorError(
      "validation_failed",
      `command: '${args[index]!.slice(0, 200)}' is a relative path, which the sandbox would look up in its own directory at deploy: give it as an absolute path`,
      { argument: index + 1 },
    );
  }
}

export type GenerationRouteDeps = Pick<Services, "generations" | "users" | "runtime" | "takes" | "audit">;

export function registerGenerationRoutes(app: OperatorApp, deps: GenerationRouteDeps): void {
  const { generations, users, runtime, takes, audit } = deps;
  const present = (id: number) => {
    const g = generations.require(id);
    const runsIn = users
      .assignments()
      .filter((p) => p.generationId === id)
      .map((p) => ({ user: p.user, slot: p.slot, role: p.role, since: new Date(p.since).toISOString() }));
    return {
      id: g.id,
      runtime: g.runtime,
      image: g.image ?? null,
      imageId: g.imageId ?? null,
      command: g.command ?? null,
      version: g.version,
      state: g.state,
      createdAt: new Date(g.createdAt).toISOString(),
      stateChangedAt: new Date(g.stateChangedAt).toISOString(),
      runsIn,
    };
  };

  /** Marking bad the only known-good generation of users who run it live leaves their rollback nowhere to go. */
  const confirmLastWayBack = (id: number, confirm: "true" | "false") => {
    const g = generations.require(id);
    if (g.state !== "known-good") return;
    if (generations.list().some((o) => o.id !== id && o.runtime === g.runtime && o.state === "known-good")) return;
    const live = users
      .assignments()
      .filter((p) => p.generationId === id && p.role === "live")
      .map((p) => p.user);
    if (!live.length) return;
    const shown = live.length > 5 ? `${live.slice(0, 5).join(", ")} and ${live.length - 5} more` : live.join(", ");
    requireConfirmation(
      confirm,
      `generation ${id} is the only known-good generation and runs live for ${shown}: marked bad, it is never deployed again and ` +
        "a rollback of those users fails with no_known_good until another generation is marked known-good",
      { generation: id, live: live.length },
    );
  };

  app.openapi(listRoute, (c) => c.json({ generations: generations.list().map((g) => present(g.id)) }, 200));

  app.openapi(addRoute, async (c) => {
    const body = c.req.valid("json");
    const { generation, created } = await audited(audit, c, "generation.add", "image" in body ? body.image : body.version, async () => {
      if ("image" in body) {
        if (takes !== "image") throw wrongRuntime(`the ${runtime.kind} runtime takes {command, version}, not an image`, { runtime: runtime.kind, takes });
        const { imageId, version } = await runtime.resolveImage(body.image);
        const existing = generations.list().find((g) => g.imageId === imageId);
        if (existing) return { generation: existing, created: false };
        return { generation: generations.add({ runtime: runtime.kind, image: body.image, imageId, version }), created: true };
      }
      if (takes === "image") throw wrongRuntime(`the ${runtime.kind} runtime takes {image}, not a command`, { runtime: runtime.kind, takes });
      refuseRelativePaths(body.command);
      return { generation: generations.add({ runtime: runtime.kind, command: body.command, version: body.version }), created: true };
    });
    return created ? c.json({ generation: present(generation.id) }, 201) : c.json({ generation: present(generation.id) }, 200);
  });

  app.openapi(markRoute, async (c) => {
    const { id, state } = c.req.valid("param");
    const { confirm } = c.req.valid("query");
    await audited(audit, c, `generation.${state}`, String(id), async () => {
      if (state === "bad") confirmLastWayBack(id, confirm);
      return generations.setState(id, state);
    });
    return c.json({ generation: present(id) }, 200);
  });
}

import { z } from "@hono/zod-openapi";

export const RoleName = z.enum(["live", "dev"]).openapi({ example: "live" });

export const ErrorSchema = z
  .object({
    error: z.object({
      code: z.string(),
      message: z.string(),
      requestId: z.string(),
      details: z.record(z.unknown()).optional(),
    }),
  })
  .openapi("Error");

export const EndpointSchema = z.object({ host: z.string(), port: z.number() }).nullable();

export const SandboxStatusSchema = z
  .object({
    user: z.string(),
    role: RoleName,
    slot: z.enum(["a", "b"]),
    generation: z.number(),
    state: z.enum(["running", "starting", "stopped", "missing"]),
    endpoint: EndpointSchema,
    startedAt: z.string().nullable(),
  })
  .openapi("Sandbox");

/** The error responses every route may give, for the OpenAPI document. */
export const errorResponses = {
  400: { description: "invalid input", content: { "application/json": { schema: ErrorSchema } } },
  404: { description: "not found", content: { "application/json": { schema: ErrorSchema } } },
  503: { description: "runtime unavailable or capacity exhausted", content: { "application/json": { schema: ErrorSchema } } },
} as const;

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
    state: z.enum(["running", "frozen", "starting", "stopped", "not started"]),
    health: z.enum(["healthy", "unhealthy"]).nullable(),
    endpoint: EndpointSchema,
    startedAt: z.string().nullable(),
    disk: z.string().optional().openapi({ description: "how its disk (HYPERVISOR_SANDBOX_DISK) holds: btrfs qgroup (a kernel limit) or measured" }),
    overDisk: z.string().optional().openapi({ description: "stopped over its disk: why, as its user is told; it stays stopped until its data is smaller" }),
  })
  .openapi("Sandbox");

/** The largest request body the operator API reads. */
export const MAX_BODY_BYTES = 64 * 1024;

const errorResponse = <D extends string>(description: D) => ({ description, content: { "application/json": { schema: ErrorSchema } } });

/** Every error status the operator API answers with, each described once for the OpenAPI document. */
const ERROR_RESPONSES = {
  400: errorResponse("invalid input: malformed JSON or a value the schema refuses (bad_request, validation_failed)"),
  401: errorResponse("over TCP: no bearer token, or not the operator token (unauthorized)"),
  404: errorResponse("no such user, generation or route (not_found)"),
  409: errorResponse(
    "conflicts with the current state: the user exists, the target is unhealthy or bad, no known-good generation (conflict, unhealthy_target, no_known_good); " +
      "a destructive step not confirmed with ?confirm=true (confirmation_required, whose message says what would follow)",
  ),
  413: errorResponse(`the request body exceeds ${MAX_BODY_BYTES / 1024} KiB (payload_too_large)`),
  503: errorResponse("runtime unavailable or capacity exhausted"),
  504: errorResponse("not done within the deadline (deadline_exceeded)"),
};

export type ErrorStatus = keyof typeof ERROR_RESPONSES;

/** The error responses a route may give, for its OpenAPI entry. */
export function errorResponses<S extends ErrorStatus>(...statuses: S[]): Pick<typeof ERROR_RESPONSES, S> {
  return Object.fromEntries(statuses.map((s) => [s, ERROR_RESPONSES[s]])) as Pick<typeof ERROR_RESPONSES, S>;
}

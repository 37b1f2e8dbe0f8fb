import { z } from "@hono/zod-openapi";

/**
 * DNS-label-like, so it is safe in container, volume and network names and in file paths: the
 * runtimes name a user's sandboxes, volumes and data dirs after it.
 */
export const USER_NAME = /^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$/;

/** A user name as every API takes it (operator routes, /auth): it names the user's sandboxes. */
export const UserName = z.string().regex(USER_NAME, "a user name: 1-32 of a-z, 0-9 and inner '-'").openapi({ example: "alice" });

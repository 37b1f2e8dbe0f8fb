import type { MiddlewareHandler } from "hono";
import { bodyLimit } from "hono/body-limit";
import { HypervisorError } from "../errors.js";

/**
 * Refuses a request body over `maxBytes` with `payload_too_large`. The unread rest of the body
 * stays on the socket, so the answer closes the connection rather than let the next keep-alive
 * request be read out of it (or the connection be cut under that request).
 */
export function limitBody(maxBytes: number): MiddlewareHandler {
  return bodyLimit({
    maxSize: maxBytes,
    onError: (c) => {
      c.header("Connection", "close");
      throw new HypervisorError("payload_too_large", `request body exceeds ${maxBytes} bytes`);
    },
  });
}

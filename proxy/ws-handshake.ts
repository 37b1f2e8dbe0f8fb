import type { IncomingHttpHeaders } from "node:http";

/** RFC 6455 §4.1: the key is 16 random bytes, base64-encoded (RFC 4648 §4): 22 characters and "==". */
const KEY = /^[+/0-9A-Za-z]{22}==$/;
/** A subprotocol is a token (RFC 6455 §4.1, RFC 9110 §5.6.2). */
const TOKEN = /^[!#$%&'*+\-.0-9A-Z^_`|a-z~]+$/;
/** The only version this proxy speaks (RFC 6455 §4.4). */
export const WEBSOCKET_VERSION = "13";

export type Handshake = { ok: true; protocols: string[] } | { ok: false; reason: string; badVersion: boolean };

function refused(reason: string, badVersion = false): Handshake {
  return { ok: false, reason, badVersion };
}

/**
 * Checks a client's opening handshake (RFC 6455 §4.2.1) before anything is asked of a sandbox,
 * at least as strictly as the ws server that completes it, so a handshake it would refuse never
 * costs an upstream connection. On success, the subprotocols offered, in order.
 */
export function checkHandshake(method: string | undefined, headers: IncomingHttpHeaders): Handshake {
  if (method !== "GET") return refused("a WebSocket handshake is a GET request");
  if (headers.upgrade?.trim().toLowerCase() !== "websocket") return refused("Upgrade must be websocket");
  const connection = headers.connection?.toLowerCase().split(",") ?? [];
  if (!connection.some((token) => token.trim() === "upgrade")) return refused("Connection must include upgrade");
  const key = headers["sec-websocket-key"];
  if (key === undefined || !KEY.test(key)) return refused("Sec-WebSocket-Key must be 16 bytes, base64-encoded");
  if (headers["sec-websocket-version"]?.trim() !== WEBSOCKET_VERSION) return refused(`Sec-WebSocket-Version must be ${WEBSOCKET_VERSION}`, true);
  const offered = headers["sec-websocket-protocol"];
  if (offered === undefined) return { ok: true, protocols: [] };
  const protocols = offered.split(",").map((p) => p.trim());
  // §4.1: non-empty tokens, each offered once (the ws client refuses anything else by throwing).
  if (!protocols.every((p) => TOKEN.test(p)) || new Set(protocols).size !== protocols.length) {
    return refused("Sec-WebSocket-Protocol must list distinct tokens");
  }
  return { ok: true, protocols };
}

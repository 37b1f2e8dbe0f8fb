import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";
import type { Slot } from "../../proxy/target.js";
import type { Db } from "../db/database.js";

/** Who is calling the gateway: the sandbox the token was made for. */
export interface Caller {
  user: string;
  slot: Slot;
  generation: number;
}

interface Row extends Caller {
  address: string | undefined;
}

const PREFIX = "hvegress_";

/** What the gateway stores and compares: never the token itself. */
function hashOf(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/** `::ffff:10.1.2.3` (a dual-stack socket's view) is `10.1.2.3`. */
function plain(address: string): string {
  return address.startsWith("::ffff:") && address.includes(".") ? address.slice(7) : address;
}

/**
 * Per-sandbox gateway tokens (DESIGN §5b): random, made at each start, stored hashed in SQLite (an
 * adopted sandbox keeps its token across a daemon restart), valid only from the sandbox's own
 * address, removed when it stops. A token identifies a sandbox to the gateway; it grants nothing
 * anywhere else.
 */
export class EgressTokens {
  private readonly byHash = new Map<string, Row>();

  constructor(private readonly db: Db) {
    for (const row of db.prepare("SELECT user, slot, generation_id, hex(token_hash) AS hash, address FROM egress_tokens").all() as {
      user: string;
      slot: Slot;
      generation_id: number;
      hash: string;
      address: string | null;
    }[]) {
      this.byHash.set(row.hash.toLowerCase(), { user: row.user, slot: row.slot, generation: row.generation_id, address: row.address ?? undefined });
    }
  }

  /** A fresh token for a sandbox about to start; any earlier one of its slot stops working. */
  issue(caller: Caller): string {
    const token = `${PREFIX}${randomBytes(32).toString("base64url")}`;
    const hash = hashOf(token);
    this.revoke(caller.user, caller.slot);
    this.db
      .prepare("INSERT INTO egress_tokens (user, slot, generation_id, token_hash, address, created_at) VALUES (?, ?, ?, ?, NULL, ?)")
      .run(caller.user, caller.slot, caller.generation, Buffer.from(hash, "hex"), Date.now());
    this.byHash.set(hash, { ...caller, address: undefined });
    return token;
  }

  /** The address the sandbox got: the only one its token is accepted from. */
  bind(user: string, slot: Slot, address: string): void {
    this.db.prepare("UPDATE egress_tokens SET address = ? WHERE user = ? AND slot = ?").run(plain(address), user, slot);
    for (const row of this.byHash.values()) if (row.user === user && row.slot === slot) row.address = plain(address);
  }

  /** The sandbox stopped or was removed: its token is gone. */
  revoke(user: string, slot: Slot): void {
    this.db.prepare("DELETE FROM egress_tokens WHERE user = ? AND slot = ?").run(user, slot);
    for (const [hash, row] of this.byHash) if (row.user === user && row.slot === slot) this.byHash.delete(hash);
  }

  /**
   * The sandbox behind a request to the gateway, or undefined: its token, from `Proxy-Authorization:
   * Basic` (forward proxy; any user name) or, for route requests, `Authorization: Bearer`,
   * `x-api-key` or `api-key`, checked against the address the connection came from.
   */
  identify(headers: IncomingHttpHeaders, sourceAddress: string | undefined, forRoute = false): Caller | undefined {
    const token = forRoute ? routeToken(headers) : proxyToken(headers);
    if (!token?.startsWith(PREFIX) || !sourceAddress) return undefined;
    const hash = hashOf(token);
    const row = this.byHash.get(hash);
    if (!row?.address) return undefined;
    const a = Buffer.from(row.address);
    const b = Buffer.from(plain(sourceAddress));
    if (a.length !== b.length || !timingSafeEqual(a, b)) return undefined;
    return { user: row.user, slot: row.slot, generation: row.generation };
  }
}

function proxyToken(headers: IncomingHttpHeaders): string | undefined {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)$/i.exec(headers["proxy-authorization"] ?? "");
  if (!m) return undefined;
  const decoded = Buffer.from(m[1]!, "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  return colon < 0 ? undefined : decoded.slice(colon + 1);
}

function routeToken(headers: IncomingHttpHeaders): string | undefined {
  const bearer = /^Bearer\s+(\S+)$/i.exec(headers.authorization ?? "")?.[1];
  const key = (name: string) => {
    const value = headers[name];
    return typeof value === "string" ? value.trim() : undefined;
  };
  return bearer ?? key("x-api-key") ?? key("api-key");
}

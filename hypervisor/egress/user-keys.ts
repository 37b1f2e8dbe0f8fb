import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Db } from "../db/database.js";
import { HypervisorError } from "../errors.js";

/** A stored key as the account page shows it: the route and the last four characters, nothing more. */
export interface UserKeyView {
  route: string;
  last4: string;
  updatedAt: string;
}

/** Shortest secrets-key file accepted: 32 bytes of entropy written as hex or base64 is longer. */
const MIN_KEY_CHARS = 32;
/** A provider key is a few hundred characters; more is a paste gone wrong. */
export const MAX_USER_KEY_CHARS = 4096;

/**
 * Reads the `egress-secrets-key` credential: HYPERVISOR_EGRESS_SECRETS_KEY_FILE, else
 * `$CREDENTIALS_DIRECTORY/egress-secrets-key`; undefined when neither exists (user keys are off).
 * The AES key is derived from the file's text (HKDF-SHA256), so `openssl rand -hex 32` will do.
 */
export function readSecretsKey(file: string | undefined, credentialsDir: string | undefined): Buffer | undefined {
  const path = file ?? (credentialsDir === undefined ? undefined : join(credentialsDir, "egress-secrets-key"));
  if (path === undefined) return undefined;
  let text: string;
  try {
    text = readFileSync(path, "utf8").trim();
  } catch (err) {
    // The credential directory may simply not hold this one: the feature is off, not broken.
    if (file === undefined && (err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new Error(`egress secrets key ${path}: cannot be read (${(err as NodeJS.ErrnoException).code ?? "error"})`);
  }
  if (text.length < MIN_KEY_CHARS) throw new Error(`egress secrets key ${path}: at least ${MIN_KEY_CHARS} characters (e.g. openssl rand -hex 32)`);
  return Buffer.from(hkdfSync("sha256", text, "hypervisor", "egress user keys v1", 32));
}

/**
 * Users' own keys for `userKeys` routes (DESIGN §5b), AES-256-GCM at rest. The row's user and
 * route are the cipher's additional data, so a ciphertext copied to another user's row or route
 * does not decrypt. No method hands a key to anyone but the route call of that user's sandboxes.
 */
export class UserKeys {
  constructor(
    private readonly db: Db,
    private readonly key: Buffer | undefined,
    private readonly now: () => number = Date.now,
  ) {}

  get enabled(): boolean {
    return this.key !== undefined;
  }

  set(user: string, route: string, value: string): UserKeyView {
    const key = this.requireKey();
    const iv = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", key, iv);
    cipher.setAAD(aad(user, route));
    const ciphertext = Buffer.concat([cipher.update(value, "utf8"), cipher.final()]);
    const last4 = value.slice(-4);
    const at = this.now();
    this.db
      .prepare(
        `INSERT INTO egress_user_keys (user, route, iv, ciphertext, tag, last4, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (user, route) DO UPDATE SET iv = excluded.iv, ciphertext = excluded.ciphertext, tag = excluded.tag, last4 = excluded.last4, updated_at = excluded.updated_at`,
      )
      .run(user, route, iv, ciphertext, cipher.getAuthTag(), last4, at);
    return { route, last4, updatedAt: new Date(at).toISOString() };
  }

  /** The user's key for the route; undefined when none is stored, or the feature is off. */
  keyFor(user: string, route: string): string | undefined {
    if (!this.key) return undefined;
    const row = this.db.prepare("SELECT iv, ciphertext, tag FROM egress_user_keys WHERE user = ? AND route = ?").get(user, route) as
      { iv: Buffer; ciphertext: Buffer; tag: Buffer } | undefined;
    if (!row) return undefined;
    try {
      const decipher = createDecipheriv("aes-256-gcm", this.key, row.iv);
      decipher.setAAD(aad(user, route));
      decipher.setAuthTag(row.tag);
      return Buffer.concat([decipher.update(row.ciphertext), decipher.final()]).toString("utf8");
    } catch {
      // Another secrets key (rotated) or a tampered row: as if none were stored; the operator's key applies.
      return undefined;
    }
  }

  list(user: string): UserKeyView[] {
    const rows = this.db.prepare("SELECT route, last4, updated_at FROM egress_user_keys WHERE user = ? ORDER BY route").all(user) as {
      route: string;
      last4: string;
      updated_at: number;
    }[];
    return rows.map((r) => ({ route: r.route, last4: r.last4, updatedAt: new Date(r.updated_at).toISOString() }));
  }

  remove(user: string, route: string): boolean {
    return this.db.prepare("DELETE FROM egress_user_keys WHERE user = ? AND route = ?").run(user, route).changes > 0;
  }

  private requireKey(): Buffer {
    if (!this.key)
      throw new HypervisorError("not_ready", "your own keys are off on this hypervisor: its operator has not set the egress-secrets-key credential");
    return this.key;
  }
}

function aad(user: string, route: string): Buffer {
  return Buffer.from(`${user}\0${route}`);
}

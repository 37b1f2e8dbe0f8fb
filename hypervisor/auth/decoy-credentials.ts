import { createHmac, randomBytes } from "node:crypto";
import type { Db } from "../db/database.js";

export interface OfferedCredential {
  id: string;
  transports: string[];
}

/**
 * Weighted choices for what a decoy looks like, close to what real accounts hold: mostly one
 * passkey, of the ID lengths and transports the common authenticators report (16 bytes for
 * Google Password Manager and Windows Hello, 20 for iCloud Keychain, 32 or 64 for security keys).
 */
const COUNTS: readonly [number, number][] = [
  [1, 70],
  [2, 25],
  [3, 5],
];
const ID_BYTES: readonly [number, number][] = [
  [16, 50],
  [20, 25],
  [32, 15],
  [64, 10],
];
const TRANSPORTS: readonly [string[], number][] = [
  [["hybrid", "internal"], 60],
  [["internal"], 25],
  [["usb"], 10],
  [["nfc", "usb"], 5],
];

/** Weights sum to 100; `byte` (0–255) picks one, so a given byte always picks the same. */
function pick<T>(choices: readonly [T, number][], byte: number): T {
  let point = (byte * 100) / 256;
  for (const [value, weight] of choices) {
    if (point < weight) return value;
    point -= weight;
  }
  return choices.at(-1)![0];
}

/**
 * Credential IDs for a user name that has no passkey (unknown, or provisioned by the operator
 * and never registered), so that `login/options` answers alike whether the name has an account
 * or not (WebAuthn L3 §14.6.2, "Username Enumeration"). Derived from the name with HMAC-SHA256
 * under a per-install secret kept in the database: the same name gets the same IDs on every
 * call and after a restart, and nobody without the secret can tell them from real ones.
 */
export class DecoyCredentials {
  private constructor(private readonly key: Buffer) {}

  /** Reads this install's key, making it on first use. */
  static of(db: Db): DecoyCredentials {
    db.prepare("INSERT OR IGNORE INTO install_secrets (name, secret, created_at) VALUES ('decoy-credentials', ?, ?)").run(randomBytes(32), Date.now());
    const row = db.prepare("SELECT secret FROM install_secrets WHERE name = 'decoy-credentials'").get() as { secret: Buffer };
    return new DecoyCredentials(row.secret);
  }

  for(username: string): OfferedCredential[] {
    const shape = this.mac("shape", username, 0);
    return Array.from({ length: pick(COUNTS, shape[0]!) }, (_, i) => {
      const length = pick(ID_BYTES, shape[1 + 2 * i]!);
      const bytes = Buffer.concat([this.mac("id", username, 2 * i), this.mac("id", username, 2 * i + 1)]).subarray(0, length);
      return { id: bytes.toString("base64url"), transports: pick(TRANSPORTS, shape[2 + 2 * i]!) };
    });
  }

  private mac(purpose: string, username: string, index: number): Buffer {
    return createHmac("sha256", this.key).update(`${purpose}\0${index}\0${username}`).digest();
  }
}

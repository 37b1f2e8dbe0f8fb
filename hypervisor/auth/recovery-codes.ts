import { Algorithm, hash, verify } from "@node-rs/argon2";
import { randomInt } from "node:crypto";
import type { Db } from "../db/database.js";

export const RECOVERY_CODE_COUNT = 10;
/** Crockford-style alphabet without 0/o, 1/l/i, u: nothing to misread when typed from paper. */
const ALPHABET = "abcdefghjkmnpqrstvwxyz23456789";
/** 3 groups of 4 from 30 symbols ≈ 59 bits each, behind argon2id and a per-user rate limit. */
const GROUPS = 3;
const GROUP_LENGTH = 4;

/**
 * Argon2id with the OWASP Password Storage Cheat Sheet's first configuration (m = 19 MiB,
 * t = 2, p = 1; RFC 9106 §4): about 20 ms per hash here, paid ten times per attempt.
 */
const ARGON2 = { algorithm: Algorithm.Argon2id, memoryCost: 19_456, timeCost: 2, parallelism: 1 } as const;

export function generateRecoveryCode(): string {
  const groups: string[] = [];
  for (let g = 0; g < GROUPS; g++) {
    let group = "";
    for (let i = 0; i < GROUP_LENGTH; i++) group += ALPHABET[randomInt(ALPHABET.length)];
    groups.push(group);
  }
  return groups.join("-");
}

/** What the user typed, as it was generated: case, spaces and dashes do not matter. */
export function normaliseRecoveryCode(input: string): string {
  const compact = input.toLowerCase().replace(/[\s-]+/g, "");
  const groups = compact.match(new RegExp(`.{1,${GROUP_LENGTH}}`, "g")) ?? [];
  return groups.join("-");
}

export interface IssuedRecoveryCodes {
  codes: string[];
  hashes: string[];
}

/**
 * Single-use recovery codes: shown once, stored only as argon2id hashes. Hashing is slow on
 * purpose, so it happens before any transaction that stores the result.
 */
export class RecoveryCodes {
  /** A hash of a code nobody knows, verified in place of codes a user does not have. */
  private readonly decoy: Promise<string> = hash(generateRecoveryCode(), ARGON2);

  constructor(
    private readonly db: Db,
    private readonly now: () => number = Date.now,
  ) {}

  async issue(): Promise<IssuedRecoveryCodes> {
    const codes = Array.from({ length: RECOVERY_CODE_COUNT }, generateRecoveryCode);
    const hashes = await Promise.all(codes.map((c) => hash(c, ARGON2)));
    return { codes, hashes };
  }

  /** Replaces every code of `user` by `hashes` (call inside the caller's transaction). */
  store(user: string, hashes: string[]): void {
    const at = this.now();
    this.db.prepare("DELETE FROM recovery_codes WHERE user = ?").run(user);
    const insert = this.db.prepare("INSERT INTO recovery_codes (user, hash, created_at) VALUES (?, ?, ?)");
    for (const h of hashes) insert.run(user, h, at);
  }

  remaining(user: string): number {
    return (this.db.prepare("SELECT count(*) AS n FROM recovery_codes WHERE user = ? AND used_at IS NULL").get(user) as { n: number }).n;
  }

  /**
   * Uses up the code if it is one of the user's unused ones. The conditional UPDATE makes two
   * concurrent uses of one code succeed once. Always exactly RECOVERY_CODE_COUNT argon2
   * verifications, the missing ones against the decoy: an unknown name, an account without
   * codes and one with ten take the same time, so the time does not tell them apart.
   */
  async consume(user: string, input: string): Promise<boolean> {
    const code = normaliseRecoveryCode(input);
    const rows = this.db.prepare("SELECT id, hash FROM recovery_codes WHERE user = ? AND used_at IS NULL").all(user) as { id: number; hash: string }[];
    const decoy = await this.decoy;
    const hashes = Array.from({ length: Math.max(RECOVERY_CODE_COUNT, rows.length) }, (_, i) => rows[i]?.hash ?? decoy);
    const matches = await Promise.all(hashes.map((h) => verify(h, code).catch(() => false)));
    const row = rows.find((_, i) => matches[i]);
    if (!row) return false;
    return this.db.prepare("UPDATE recovery_codes SET used_at = ? WHERE id = ? AND used_at IS NULL").run(this.now(), row.id).changes === 1;
  }
}

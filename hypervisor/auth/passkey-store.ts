import type { Db } from "../db/database.js";

export interface Passkey {
  /** Credential ID, base64url (WebAuthn L3 §5.1 rawId). */
  id: string;
  user: string;
  publicKey: Uint8Array<ArrayBuffer>;
  counter: number;
  transports: string[];
  deviceType: string;
  backedUp: boolean;
  name: string;
  createdAt: number;
  lastUsedAt: number | null;
}

export type NewPasskey = Omit<Passkey, "createdAt" | "lastUsedAt">;

interface PasskeyRow {
  id: string;
  user: string;
  public_key: Buffer;
  counter: number;
  transports: string | null;
  device_type: string;
  backed_up: number;
  name: string;
  created_at: number;
  last_used_at: number | null;
}

function fromRow(r: PasskeyRow): Passkey {
  return {
    id: r.id,
    user: r.user,
    publicKey: new Uint8Array(r.public_key),
    counter: r.counter,
    transports: r.transports ? (JSON.parse(r.transports) as string[]) : [],
    deviceType: r.device_type,
    backedUp: r.backed_up === 1,
    name: r.name,
    createdAt: r.created_at,
    lastUsedAt: r.last_used_at,
  };
}

/** Passkey accounts and their credentials as SQLite holds them. */
export class PasskeyStore {
  constructor(
    private readonly db: Db,
    private readonly now: () => number = Date.now,
  ) {}

  /** The account's WebAuthn user handle, if the user has registered with a passkey. */
  handleOf(user: string): string | undefined {
    return (this.db.prepare("SELECT handle FROM accounts WHERE user = ?").get(user) as { handle: string } | undefined)?.handle;
  }

  createAccount(user: string, handle: string): void {
    this.db.prepare("INSERT INTO accounts (user, handle, created_at) VALUES (?, ?, ?)").run(user, handle, this.now());
  }

  add(p: NewPasskey): Passkey {
    const at = this.now();
    this.db
      .prepare(
        `INSERT INTO passkeys (id, user, public_key, counter, transports, device_type, backed_up, name, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(p.id, p.user, Buffer.from(p.publicKey), p.counter, JSON.stringify(p.transports), p.deviceType, p.backedUp ? 1 : 0, p.name, at);
    return this.get(p.id)!;
  }

  get(id: string): Passkey | undefined {
    const row = this.db.prepare("SELECT * FROM passkeys WHERE id = ?").get(id) as PasskeyRow | undefined;
    return row && fromRow(row);
  }

  list(user: string): Passkey[] {
    return (this.db.prepare("SELECT * FROM passkeys WHERE user = ? ORDER BY created_at, id").all(user) as PasskeyRow[]).map(fromRow);
  }

  /** After a verified assertion: the authenticator's new signature counter (§6.1.1). */
  markUsed(id: string, counter: number, backedUp: boolean): void {
    this.db.prepare("UPDATE passkeys SET counter = ?, backed_up = ?, last_used_at = ? WHERE id = ?").run(counter, backedUp ? 1 : 0, this.now(), id);
  }

  /** Only the user's own passkey; false when they hold none with this id. */
  rename(user: string, id: string, name: string): boolean {
    return this.db.prepare("UPDATE passkeys SET name = ? WHERE user = ? AND id = ?").run(name, user, id).changes === 1;
  }

  remove(user: string, id: string): boolean {
    return this.db.prepare("DELETE FROM passkeys WHERE user = ? AND id = ?").run(user, id).changes === 1;
  }
}

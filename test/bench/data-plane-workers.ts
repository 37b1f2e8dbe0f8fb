import Database from "better-sqlite3";
import { join } from "node:path";
import { openDatabase } from "../../hypervisor/db/database.js";
import { hashToken, SessionStore } from "../../hypervisor/auth/session-store.js";
import { tempDir } from "../helpers/daemon.js";

const USERS = 10_000;
const LOOKUPS = 200_000;

/** Mean cost of `fn` in µs over `n` calls, after a warm-up. */
function perCall(n: number, fn: (i: number) => void): number {
  for (let i = 0; i < Math.min(n, 10_000); i++) fn(i);
  const began = process.hrtime.bigint();
  for (let i = 0; i < n; i++) fn(i);
  return Number(process.hrtime.bigint() - began) / 1000 / n;
}

/**
 * What a data plane in worker processes would pay per request that the one-process daemon does
 * not (docs/architecture.md, "Past one core"): a session read from SQLite in WAL mode through a
 * worker's own read-only connection, instead of the owner's in-memory cache; the check that lets
 * a worker cache sessions anyway (PRAGMA data_version, which changes when another connection
 * commits); and the route table pushed to each worker.
 */
export async function dataPlaneWorkersBench(): Promise<void> {
  const dir = tempDir("hv-bench-workers-");
  try {
    const path = join(dir.path, "hypervisor.db");
    const db = openDatabase(path);
    const store = new SessionStore(db, { cacheSize: USERS });
    const tokens: string[] = [];
    db.transaction(() => {
      for (let i = 0; i < USERS; i++) {
        const user = `user${i}`;
        db.prepare("INSERT INTO users (name, created_at) VALUES (?, ?)").run(user, Date.now());
        tokens.push(store.create(user, "full").token);
      }
    })();
    const hashes = tokens.map(hashToken);

    const reader = new Database(path, { readonly: true });
    const select = reader.prepare<[string], { id: string }>("SELECT id, user, scope, last_seen_at, expires_at FROM sessions WHERE token_hash = ?");
    const dataVersion = reader.prepare("PRAGMA data_version").pluck();
    const routes = Array.from({ length: USERS }, (_, i) => ({ user: `user${i}`, live: "a", dev: "b", version: 1 }));

    const rows: [string, number][] = [
      ["owner's cached check (SessionStore.authenticateHash)", perCall(LOOKUPS, (i) => store.authenticateHash(hashes[i % USERS]!))],
      ["SHA-256 of the cookie token (per connection now)", perCall(LOOKUPS, (i) => hashToken(tokens[i % USERS]!))],
      ["worker's SELECT by token hash, WAL, own connection", perCall(LOOKUPS, (i) => select.get(hashes[(i * 7919) % USERS]!))],
      ["worker's PRAGMA data_version (is its cache stale?)", perCall(LOOKUPS, () => dataVersion.get())],
      [`route table of ${USERS} users pushed as JSON (encode+decode)`, perCall(50, () => JSON.parse(JSON.stringify(routes)))],
    ];
    console.log(`\nData plane past one core: per-lookup costs measured here (${USERS} sessions, µs per call)`);
    for (const [name, us] of rows) console.log(`${name.padEnd(62)}${us.toFixed(2).padStart(10)}`);
    reader.close();
    db.close();
  } finally {
    dir.remove();
  }
}

/**
 * Schema history. Append only: a released migration is never edited, so every database
 * reaches the same shape by replaying the list from its recorded version.
 */
export const migrations: readonly string[] = [
  `
  CREATE TABLE users (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
  ) STRICT;

  -- The route table. Only live_slot is stored, so live and dev can never name the same slot
  -- and a swap is a single-row write: the mapping is entirely old or entirely new.
  CREATE TABLE routes (
    user TEXT PRIMARY KEY REFERENCES users(name),
    live_slot TEXT NOT NULL CHECK (live_slot IN ('a', 'b')),
    version INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
  ) STRICT;

  CREATE TABLE generations (
    id INTEGER PRIMARY KEY,
    runtime TEXT NOT NULL CHECK (runtime IN ('podman', 'process', 'fake')),
    image TEXT,
    image_id TEXT,
    command TEXT,
    version TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'candidate' CHECK (state IN ('candidate', 'known-good', 'bad')),
    created_at INTEGER NOT NULL,
    state_changed_at INTEGER NOT NULL
  ) STRICT;

  -- One row per user and slot: which generation the slot runs and what the operator wants of it.
  CREATE TABLE sandboxes (
    user TEXT NOT NULL REFERENCES users(name),
    slot TEXT NOT NULL CHECK (slot IN ('a', 'b')),
    generation_id INTEGER NOT NULL REFERENCES generations(id),
    generation_since INTEGER NOT NULL,
    last_started_at INTEGER,
    last_stopped_at INTEGER,
    PRIMARY KEY (user, slot)
  ) STRICT;

  CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    source TEXT,
    outcome TEXT NOT NULL,
    duration_ms INTEGER,
    details TEXT
  ) STRICT;
  CREATE INDEX audit_at ON audit(at);
  `,
];

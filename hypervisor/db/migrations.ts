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
  `
  -- Passkey accounts (WebAuthn Level 3). An operator-provisioned user has no account row until
  -- it registers; the handle is the random WebAuthn user.id, never the user name (§5.4.3).
  CREATE TABLE accounts (
    user TEXT PRIMARY KEY REFERENCES users(name),
    handle TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
  ) STRICT;

  CREATE TABLE passkeys (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES accounts(user),
    public_key BLOB NOT NULL,
    counter INTEGER NOT NULL,
    transports TEXT,
    device_type TEXT NOT NULL,
    backed_up INTEGER NOT NULL,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER
  ) STRICT;
  CREATE INDEX passkeys_user ON passkeys(user);

  -- Argon2id hashes only; a code is shown once and never stored in the clear.
  CREATE TABLE recovery_codes (
    id INTEGER PRIMARY KEY,
    user TEXT NOT NULL REFERENCES accounts(user),
    hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    used_at INTEGER
  ) STRICT;
  CREATE INDEX recovery_codes_user ON recovery_codes(user);

  -- token_hash is SHA-256 of the cookie value: a copy of this table signs nobody in.
  CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    user TEXT NOT NULL REFERENCES users(name),
    scope TEXT NOT NULL CHECK (scope IN ('full', 'recovery')),
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX sessions_user ON sessions(user);

  CREATE TABLE invites (
    id INTEGER PRIMARY KEY,
    code_hash TEXT NOT NULL UNIQUE,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    used_by TEXT
  ) STRICT;
  `,
  `
  -- Secrets of this install, made at first use and never shown or exported. 'decoy-credentials'
  -- keys the made-up credential IDs offered for user names without passkeys.
  CREATE TABLE install_secrets (
    name TEXT PRIMARY KEY,
    secret BLOB NOT NULL,
    created_at INTEGER NOT NULL
  ) STRICT;
  `,
  `
  -- An operator may disable a user: no sign-in, no sessions, no proxied requests, data kept.
  ALTER TABLE users ADD COLUMN disabled_at INTEGER;
  `,
  `
  -- Podman hosts (DESIGN §8a). A removed host keeps its row (removed_at), so the built-in
  -- 'local' host is not registered again at the next start once an operator removed it.
  CREATE TABLE hosts (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    address TEXT NOT NULL,
    capacity INTEGER NOT NULL CHECK (capacity > 0),
    state TEXT NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'cordoned', 'draining')),
    created_at INTEGER NOT NULL,
    removed_at INTEGER
  ) STRICT;

  -- Where each user's two sandboxes live: sticky, changed only by a move.
  CREATE TABLE placements (
    user TEXT PRIMARY KEY REFERENCES users(name),
    host TEXT NOT NULL REFERENCES hosts(name),
    placed_at INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX placements_host ON placements(host);
  `,
  `
  -- Users removed with their data kept: the name stays reserved while the data exists, so a new
  -- account of that name is never handed the old one's data, until an operator purges it. host:
  -- where a Podman fleet kept the data (null on a single-host runtime).
  CREATE TABLE removed_users (
    name TEXT PRIMARY KEY,
    removed_at INTEGER NOT NULL,
    host TEXT
  ) STRICT;
  `,
  `
  -- Users' own keys for egress routes that allow them (DESIGN §5b): AES-256-GCM with the
  -- egress-secrets-key credential, which never enters the database. last4 is all that is shown.
  CREATE TABLE egress_user_keys (
    user TEXT NOT NULL REFERENCES users(name),
    route TEXT NOT NULL,
    iv BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    tag BLOB NOT NULL,
    last4 TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user, route)
  ) STRICT;
  `,
  `
  -- Snapshots of a slot's data (DESIGN §2a). The bytes live beside the sandbox data, never in
  -- the state dir; a row is written only once its snapshot is complete, so a snapshot on disk
  -- without a row is a half-written one and is removed at the next start.
  CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    slot TEXT NOT NULL CHECK (slot IN ('a', 'b')),
    generation_id INTEGER NOT NULL,
    reason TEXT NOT NULL CHECK (reason IN ('manual', 'pre-promote', 'pre-rollback', 'pre-restore', 'fork')),
    method TEXT NOT NULL CHECK (method IN ('btrfs', 'reflink', 'copy', 'move')),
    size_bytes INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX snapshots_user ON snapshots(user, slot, created_at);
  `,
  `
  -- Egress gateway tokens (DESIGN §5b): one per running sandbox, made at each start and removed
  -- when it stops. Only a hash is kept; address: the one source the token is valid from.
  CREATE TABLE egress_tokens (
    user TEXT NOT NULL,
    slot TEXT NOT NULL CHECK (slot IN ('a', 'b')),
    generation_id INTEGER NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    address TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user, slot)
  ) STRICT;
  `,
  `
  -- hv_sandbox cookies (a sandbox origin's grant, DESIGN §4) by the SHA-256 of their token, so a
  -- restart of the daemon ends none of them: a page's requests and WebSockets on its sandbox
  -- origin go on across it. A grant ends with the session it came from.
  CREATE TABLE sandbox_grants (
    token_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('live', 'dev')),
    session_hash TEXT NOT NULL REFERENCES sessions(token_hash) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX sandbox_grants_session ON sandbox_grants(session_hash, role);
  `,
];

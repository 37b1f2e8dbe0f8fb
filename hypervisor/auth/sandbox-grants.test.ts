import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { openDatabase, type Db } from "../db/database.js";
import { SandboxGrants } from "./sandbox-grants.js";
import { SessionStore } from "./session-store.js";

const LIVE = { user: "alice", role: "live" } as const;

/** A daemon's view of one state database: what a restart makes anew over the same file. */
function daemon(db: Db): { sessions: SessionStore; grants: SandboxGrants } {
  const sessions = new SessionStore(db);
  return { sessions, grants: new SandboxGrants(sessions, db) };
}

/** A signed-in browser's hv_sandbox cookie for alice's live origin, by the launch a page load makes. */
function launch(d: ReturnType<typeof daemon>): { cookie: string; sessionId: string } {
  const { token, session } = d.sessions.create("alice", "full");
  const issued = d.grants.issueLaunch(`hv_session=${token}`, "live", "/");
  assert.ok(issued);
  const redeemed = d.grants.redeemLaunch(issued.code, LIVE);
  assert.ok(redeemed);
  return { cookie: `hv_sandbox=${redeemed.token}`, sessionId: session.sessionId };
}

describe("SandboxGrants", () => {
  const withDb = (body: (path: string) => void) => () => {
    const dir = mkdtempSync(join(tmpdir(), "hv-grants-"));
    try {
      body(join(dir, "hypervisor.db"));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };

  it(
    "keeps a sandbox cookie valid across a restart of the daemon, so a page's requests and WebSocket reconnections go on",
    withDb((path) => {
      const before = openDatabase(path);
      before.prepare("INSERT INTO users (name, created_at) VALUES ('alice', 0)").run();
      const { cookie } = launch(daemon(before));
      before.close();
      const after = daemon(openDatabase(path));
      assert.equal(after.grants.authenticateSandbox(cookie, LIVE)?.user, "alice");
      assert.equal(after.grants.authenticateSandbox(cookie, { user: "alice", role: "dev" }), undefined, "for its own origin only");
    }),
  );

  it(
    "ends a grant with its session, in memory and on disk",
    withDb((path) => {
      const db = openDatabase(path);
      db.prepare("INSERT INTO users (name, created_at) VALUES ('alice', 0)").run();
      const d = daemon(db);
      const { cookie, sessionId } = launch(d);
      assert.equal(d.grants.authenticateSandbox(cookie, LIVE)?.sessionId, sessionId);
      d.sessions.revoke(sessionId);
      assert.equal(d.grants.authenticateSandbox(cookie, LIVE), undefined);
      assert.equal(daemon(db).grants.authenticateSandbox(cookie, LIVE), undefined, "nor after a restart");
      assert.equal((db.prepare("SELECT count(*) AS n FROM sandbox_grants").get() as { n: number }).n, 0, "its row went with the session's");
      db.close();
    }),
  );

  it(
    "keeps only a session's latest few grants per role: a browser holds one cookie per origin",
    withDb((path) => {
      const db = openDatabase(path);
      db.prepare("INSERT INTO users (name, created_at) VALUES ('alice', 0)").run();
      const d = daemon(db);
      const { token } = d.sessions.create("alice", "full");
      const cookies = Array.from({ length: 10 }, () => {
        const issued = d.grants.issueLaunch(`hv_session=${token}`, "live", "/")!;
        return `hv_sandbox=${d.grants.redeemLaunch(issued.code, LIVE)!.token}`;
      });
      assert.equal((db.prepare("SELECT count(*) AS n FROM sandbox_grants").get() as { n: number }).n, 4);
      const restarted = daemon(db);
      assert.equal(restarted.grants.authenticateSandbox(cookies[0], LIVE), undefined, "the oldest went");
      assert.equal(restarted.grants.authenticateSandbox(cookies[9], LIVE)?.user, "alice", "the latest stays");
      db.close();
    }),
  );
});

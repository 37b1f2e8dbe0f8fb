import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { referenceSandboxCommand } from "../../hypervisor/generations/default-generation.js";
import { bootDaemon, type TestDaemon } from "../helpers/daemon.js";
import { explain, runCli } from "../helpers/hypervisorctl.js";
import { runId, testUser } from "../helpers/run-id.js";
import { baseUrl } from "../helpers/sandbox-client.js";

const sandbox = referenceSandboxCommand();

describe("hypervisorctl: snapshots, promote, rollback --data and fork (process runtime)", () => {
  let t: TestDaemon;
  const user = testUser("ctl-data");
  const out = mkdtempSync(join(tmpdir(), `hv-${runId}-ctl-data-`));
  const ctl = (...args: string[]) => runCli(["--socket", t.daemon.operatorSocket, ...args]);
  const bump = async (role: "live" | "dev") => {
    const { endpoint } = await t.daemon.services.manager.ensure(user, role);
    return ((await (await fetch(`${baseUrl(endpoint)}/counter`, { method: "POST" })).json()) as { count: number }).count;
  };

  before(async () => {
    t = await bootDaemon({ env: { HYPERVISOR_START_TIMEOUT_MS: "5000" } });
    assert.equal((await ctl("users", "add", user)).code, 0);
  });
  after(async () => {
    for (const role of ["live", "dev"] as const) await t?.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t?.close();
    rmSync(out, { recursive: true, force: true });
  });

  it("creates, lists, exports, pins, restores and deletes snapshots", async () => {
    assert.equal(await bump("live"), 1);
    const created = await ctl("snapshots", "create", user, "live");
    assert.equal(created.code, 0, explain(created));
    const id = /snapshot ([0-9a-f]{12}) of/.exec(created.stdout)?.[1];
    assert.ok(id, created.stdout);
    const list = await ctl("snapshots", "list", user);
    assert.match(list.stdout, new RegExp(`${id}\\s+a\\s+manual`));
    const file = join(out, "snap.tar");
    const exported = await ctl("snapshots", "export", user, id, file);
    assert.equal(exported.code, 0, explain(exported));
    const listing = spawnSync("tar", ["-xOf", file, "./counter"], { encoding: "utf8" });
    assert.equal(listing.stdout.trim(), "1");
    assert.equal((await ctl("snapshots", "export", user, id, file)).code, 1, "never overwrites a file");
    assert.equal((await ctl("snapshots", "pin", user, id)).code, 0);
    assert.equal(await bump("live"), 2);
    const restored = await ctl("snapshots", "restore", user, id);
    assert.equal(restored.code, 0, explain(restored));
    assert.match(restored.stdout, /the data it replaced is snapshot [0-9a-f]{12}/);
    assert.equal(await bump("live"), 2, "back to 1, then one more");
    const missing = await ctl("snapshots", "delete", user, "000000000000");
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /not_found/);
    assert.equal((await ctl("snapshots", "create", user, "sideways")).code, 2, "a bad slot is a usage error");
    assert.equal((await ctl("snapshots", "delete", user, id)).code, 0);
    assert.doesNotMatch((await ctl("snapshots", "list", user)).stdout, new RegExp(id));
    assert.equal(readFileSync(file).length > 0, true);
  });

  it("forks, promotes and rolls back with data, one line per user", async () => {
    const g1 = t.daemon.services.routing.generationOf(user, "live");
    const g2 = (
      await t.operator.post("/generations", { command: [...sandbox.command.filter((a) => !a.startsWith("--version=")), "--version=2"], version: "2" })
    ).body.generation.id as number;
    assert.equal((await ctl("generations", "known-good", String(g1))).code, 0);
    const deployed = await ctl("deploy", String(g2), "--users", user, "--with-live-data");
    assert.equal(deployed.code, 0, explain(deployed));
    assert.match(deployed.stdout, /snapshot [0-9a-f]{12}/);
    const forked = await ctl("fork", user);
    assert.equal(forked.code, 0, explain(forked));
    const promoted = await ctl("promote", "--users", user);
    assert.equal(promoted.code, 0, explain(promoted));
    assert.match(promoted.stdout, new RegExp(`✓ ${user}.*gen ${g2}.*snapshot [0-9a-f]{12}`));
    const back = await ctl("rollback", "--users", user, "--data");
    assert.equal(back.code, 0, explain(back));
    assert.match(back.stdout, new RegExp(`✓ ${user}.*gen ${g1}.*kept [0-9a-f]{12}`));
    assert.equal(t.daemon.services.routing.generationOf(user, "live"), g1);
  });
});

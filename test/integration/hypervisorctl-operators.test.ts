import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readlinkSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { referenceSandboxCommand } from "../../hypervisor/generations/default-generation.js";
import { SESSION_COOKIE } from "../../proxy/cookies.js";
import { bootDaemon, sandboxDataDir, type TestDaemon } from "../helpers/daemon.js";
import { explain, runCli, startCli, waitForOutput } from "../helpers/hypervisorctl.js";
import { repoRoot } from "../helpers/paths.js";
import { testUser } from "../helpers/run-id.js";

const readlinkOr = (path: string) => {
  try {
    return readlinkSync(path);
  } catch {
    return "";
  }
};
const API_ERROR = /^error: [a-z_]+: .+ \(request [0-9a-f-]{36}\)$/m;

describe("hypervisorctl: operators' commands against a running daemon (process runtime)", () => {
  let t: TestDaemon;
  const [alice, bob, carol, dave, erin] = ["op-alice", "op-bob", "op-carol", "op-dave", "op-erin"].map(testUser) as [string, string, string, string, string];

  const ctl = (...args: string[]) => runCli(["--socket", t.daemon.operatorSocket, ...args]);
  const ctlJson = async <T = any>(...args: string[]): Promise<T> => {
    const r = await ctl("--json", ...args);
    assert.equal(r.code, 0, explain(r));
    return JSON.parse(r.stdout) as T;
  };
  const follow = (...args: string[]) => startCli(["--socket", t.daemon.operatorSocket, ...args]);

  before(async () => {
    t = await bootDaemon({ env: { HYPERVISOR_START_TIMEOUT_MS: "5000" } });
    for (const user of [alice, bob, carol, dave, erin]) assert.equal((await ctl("users", "add", user)).code, 0);
  });
  after(async () => {
    for (const user of [alice, bob, carol, dave, erin]) await t.daemon.services.userRemoval.remove(user, { purge: true }).catch(() => undefined);
    await t.close();
  });

  it("prints its version, from the wrapper in the repository root and through npx too", async () => {
    const { version } = (await import(join(repoRoot, "package.json"), { with: { type: "json" } })).default as { version: string };
    const direct = await runCli(["--version"]);
    assert.equal(direct.code, 0, explain(direct));
    assert.equal(direct.stdout, `hypervisorctl ${version}\n`);
    const wrapper = await runCli(["--version"], {}, [join(repoRoot, "hypervisorctl")]);
    assert.equal(wrapper.stdout, `hypervisorctl ${version}\n`, explain(wrapper));
    const npx = spawnSync("npx", ["--no-install", "hypervisorctl", "--version"], { cwd: repoRoot, encoding: "utf8" });
    assert.equal(npx.stdout, `hypervisorctl ${version}\n`, npx.stderr);
  });

  it("users list: every user with its state, sessions and slots, as a table and as JSON", async () => {
    t.daemon.services.sessions.create(alice, "full");
    const json = await ctlJson<{ users: { name: string; disabledAt: string | null; sessions: number; live: { slot: string; generation: number } }[] }>(
      "users",
      "list",
    );
    assert.deepEqual(
      json.users.map((u) => u.name),
      t.daemon.services.users.users(),
    );
    const a = json.users.find((u) => u.name === alice)!;
    assert.equal(a.disabledAt, null);
    assert.equal(a.sessions, 1);
    assert.equal(a.live.slot, "a");
    const table = await ctl("users");
    assert.equal(table.code, 0, explain(table));
    assert.match(table.stdout, /^USER\s+STATE\s+SESSIONS\s+LIVE\s+DEV\s+CREATED$/m);
    assert.match(table.stdout, new RegExp(`^${alice}\\s+enabled\\s+1\\s+a gen \\d+\\s+b gen \\d+\\s+\\d{4}-`, "m"));
  });

  it("users disable ends the user's sessions and refuses new ones; enable lets it sign in again", async () => {
    const { token } = t.daemon.services.sessions.create(bob, "full");
    const cookie = `${SESSION_COOKIE}=${token}`;
    assert.ok(t.daemon.services.sessions.authenticate(cookie));
    const disabled = await ctl("users", "disable", bob);
    assert.equal(disabled.code, 0, explain(disabled));
    assert.equal(disabled.stdout, `user ${bob} disabled; 1 session ended\n`);
    assert.equal(t.daemon.services.sessions.authenticate(cookie), undefined, "the session is gone");
    const proxied = await fetch(`${t.publicUrl}/`, { headers: { cookie, accept: "application/json" }, redirect: "manual" });
    assert.ok(proxied.status === 401 || proxied.status === 302, `a proxied request is refused: ${proxied.status}`);
    assert.throws(() => t.daemon.services.sessions.create(bob, "full"), /this account is disabled/);
    const listed = await ctlJson<{ users: { name: string; disabledAt: string | null }[] }>("users", "list");
    assert.ok(listed.users.find((u) => u.name === bob)!.disabledAt);

    const enabled = await ctlJson<{ user: { name: string; disabledAt: string | null } }>("users", "enable", bob);
    assert.equal(enabled.user.disabledAt, null);
    assert.ok(t.daemon.services.sessions.create(bob, "full").token, "signing in works again");
    const audit = t.daemon.services.audit.list({ limit: 2 }).map((e) => [e.action, e.target, e.outcome]);
    assert.deepEqual(audit, [
      ["user.enable", bob, "ok"],
      ["user.disable", bob, "ok"],
    ]);
  });

  it("users sessions revoke ends every session of one user only", async () => {
    t.daemon.services.sessions.create(carol, "full");
    t.daemon.services.sessions.create(carol, "full");
    const others = t.daemon.services.sessions.count(alice);
    const r = await ctl("users", "sessions", "revoke", carol);
    assert.equal(r.code, 0, explain(r));
    assert.equal(r.stdout, `2 sessions of ${carol} ended\n`);
    assert.equal(t.daemon.services.sessions.count(carol), 0);
    assert.equal(t.daemon.services.sessions.count(alice), others);
    const json = await ctlJson<{ user: string; revokedSessions: number }>("users", "sessions", "revoke", carol);
    assert.deepEqual(json, { user: carol, revokedSessions: 0 });
  });

  it("logs: the last lines of a sandbox, as text or JSON; a never-started one says how to start it", async () => {
    const never = await ctl("logs", alice, "dev");
    assert.equal(never.code, 1, explain(never));
    assert.match(never.stderr, API_ERROR);
    assert.match(
      never.stderr,
      new RegExp(`not_found: ${alice}'s dev sandbox has not been started, so it has no logs yet \\(hypervisorctl sandboxes start ${alice} dev\\)`),
    );
    assert.equal((await ctl("sandboxes", "start", alice, "live")).code, 0);
    await ctl("sandboxes"); // probes health: a line in the log
    const json = await ctlJson<{ user: string; role: string; lines: string[] }>("logs", alice, "live", "--tail", "3");
    assert.equal(json.user, alice);
    assert.ok(json.lines.length > 0 && json.lines.length <= 3, JSON.stringify(json.lines));
    const text = await ctl("logs", alice, "live", "--tail", "3");
    assert.equal(text.stdout, json.lines.map((l) => `${l}\n`).join(""));
    const all = await ctl("logs", alice, "live");
    assert.match(all.stdout, /\/health/);
    for (const [args, message] of [
      [["logs", alice, "prod"], /ROLE must be live or dev/],
      [["logs", alice, "live", "--tail", "lots"], /--tail must be a whole number/],
      [["--json", "logs", alice, "live", "-f"], /--json does not apply to -f/],
    ] as const) {
      const r = await ctl(...args);
      assert.equal(r.code, 2, explain(r));
      assert.match(r.stderr, message);
    }
  });

  it("logs -f prints new lines as they come and ends when the sandbox stops", async () => {
    const child = follow("logs", alice, "live", "-f", "--tail", "0");
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
    // Each listing probes the sandbox's health, which its log records.
    const probing = setInterval(() => void ctl("sandboxes", "--user", alice), 300);
    try {
      await waitForOutput(child, (out) => /\/health/.test(out));
    } finally {
      clearInterval(probing);
    }
    assert.equal((await ctl("sandboxes", "stop", alice, "live")).code, 0);
    assert.equal(await exited, 0, "the stream ends with the sandbox");
  });

  it("ends a followed log when its reader goes away: the daemon lets go of the log file", async () => {
    assert.equal((await ctl("sandboxes", "start", alice, "live")).code, 0);
    const log = join(t.stateDir, "sandboxes", `${alice}-${t.daemon.services.routing.slotOf(alice, "live")}`, "sandbox.log");
    // The daemon runs in this process: its open files are ours.
    const openOnLog = () => readdirSync("/proc/self/fd").filter((fd) => readlinkOr(`/proc/self/fd/${fd}`) === log).length;
    const before = openOnLog();
    const req = request({ socketPath: t.daemon.operatorSocket, path: `/sandboxes/${alice}/live/logs?tail=1&follow=true` });
    const firstLine = new Promise<void>((resolve, reject) => {
      req.once("response", (res) => res.once("data", () => resolve()));
      req.once("error", reject);
    });
    req.end();
    await firstLine;
    assert.equal(openOnLog(), before + 1, "following holds the log open");
    req.destroy();
    for (let i = 0; i < 100 && openOnLog() > before; i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(openOnLog(), before, "and lets it go with the reader");
    assert.equal((await ctl("sandboxes", "stop", alice, "live")).code, 0);
  });

  it("sandboxes stop --user and --all stop what runs, one line each; status and sandboxes agree", async () => {
    for (const [user, role] of [
      [alice, "live"],
      [alice, "dev"],
      [carol, "live"],
    ] as const) {
      assert.equal((await ctl("sandboxes", "start", user, role)).code, 0);
    }
    const rows = (await ctlJson<{ sandboxes: { state: string; health: string | null }[] }>("sandboxes")).sandboxes;
    const status = await ctlJson<{ sandboxes: { running: number; notStarted: number; unhealthy: number } }>("status");
    assert.equal(status.sandboxes.running, rows.filter((s) => s.state === "running").length);
    assert.equal(status.sandboxes.notStarted, rows.filter((s) => s.state === "not started").length);
    assert.ok(rows.filter((s) => s.state === "running").every((s) => s.health === "healthy"));
    assert.ok(rows.filter((s) => s.state !== "running").every((s) => s.health === null));
    const human = await ctl("status");
    assert.match(human.stdout, new RegExp(`^sandboxes\\s+${status.sandboxes.running} running of 200 at most`, "m"));

    const byUser = await ctl("sandboxes", "stop", "--user", alice);
    assert.equal(byUser.code, 0, explain(byUser));
    assert.match(byUser.stdout, new RegExp(`^✓ ${alice}\\s+live\\s+stopped$`, "m"));
    assert.match(byUser.stdout, new RegExp(`^✓ ${alice}\\s+dev\\s+stopped$`, "m"));
    assert.match(byUser.stdout, /^stopped 2 of 2 sandboxes$/m);
    assert.ok(t.daemon.services.manager.isRunning(carol, "a"), "another user's sandbox runs on");

    const everything = await ctlJson<{ ok: boolean; results: { user: string; role: string; ok: boolean }[] }>("sandboxes", "stop", "--all");
    assert.equal(everything.ok, true);
    assert.deepEqual(
      everything.results.map((r) => [r.user, r.role, r.ok]),
      [[carol, "live", true]],
    );
    assert.equal(t.daemon.services.manager.runningCount(), 0);
    assert.equal((await ctl("sandboxes", "stop", "--all")).stdout, "no running sandboxes\n");
    for (const args of [
      ["sandboxes", "stop"],
      ["sandboxes", "stop", "--all", "--user", alice],
      ["sandboxes", "stop", alice, "live", "--all"],
    ]) {
      const r = await ctl(...args);
      assert.equal(r.code, 2, `${args.join(" ")}: ${explain(r)}`);
      assert.match(r.stderr, /give USER ROLE, or --user USER, or --all/);
    }
  });

  it("--watch redraws status and sandboxes until interrupted, and refuses --json", async () => {
    for (const command of [["status"], ["sandboxes"]]) {
      const child = follow(...command, "--watch");
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      const header = `hypervisorctl ${command[0] === "status" ? "status" : "sandboxes list"}, every 2 s (Ctrl-C to stop)`;
      await waitForOutput(child, (out) => out.split(header).length > 2);
      child.kill("SIGINT");
      await exited;
      // Into a pipe: frames one after another under their headings, no screen control codes.
      assert.doesNotMatch(child.out(), /\x1b/);
      const frames = child
        .out()
        .split(/^.*hypervisorctl .*, every 2 s \(Ctrl-C to stop\)\n/m)
        .filter(Boolean);
      assert.ok(frames.length >= 2, child.out());
      assert.match(frames[1]!, command[0] === "status" ? /^runtime\s+process$/m : /^USER\s+ROLE\s+SLOT/m);
    }
    const json = await ctl("--json", "status", "--watch");
    assert.equal(json.code, 2, explain(json));
    assert.match(json.stderr, /--watch does not apply to --json/);
  });

  it("deploy shows what /health last answered while a start waits for it", async () => {
    const slowUser = testUser("op-slow");
    assert.equal((await t.operator.post("/users", { name: slowUser })).status, 201);
    const { command } = referenceSandboxCommand();
    const slow = await t.operator.post("/generations", {
      command: [...command.filter((a) => !a.startsWith("--version=")), "--version=slow", "--slow-start-ms=2500"],
      version: "slow",
    });
    assert.equal(slow.status, 201, JSON.stringify(slow.body));
    const deploy = await ctl("deploy", String(slow.body.generation.id), "--users", slowUser);
    assert.equal(deploy.code, 0, explain(deploy));
    assert.match(deploy.stdout, new RegExp(`^… ${slowUser}\\s+waiting for health  .*  /health: connection refused`, "m"));
    await t.daemon.services.manager.stop(slowUser, "dev");
  });

  it("deploy shows each user's start as it goes; a refused deploy --users is audited with its reason", async () => {
    const generation = t.daemon.services.routing.generationOf(dave, "dev");
    const deploy = await ctl("deploy", String(generation), "--users", dave);
    assert.equal(deploy.code, 0, explain(deploy));
    assert.match(deploy.stdout, new RegExp(`^… ${dave}\\s+starting  \\d+ ms$`, "m"));
    assert.match(deploy.stdout, new RegExp(`^… ${dave}\\s+healthy(  \\d+ failed probes?)?  \\d+(\\.\\d)? m?s$`, "m"));
    assert.match(deploy.stdout, new RegExp(`^✓ ${dave}\\s+dev b`, "m"));

    const nobody = testUser("op-nobody");
    const refused = await ctl("deploy", String(generation), "--users", `${dave},${nobody}`);
    assert.equal(refused.code, 1, explain(refused));
    assert.match(refused.stderr, new RegExp(`^error: not_found: no user ${nobody} \\(hypervisorctl users list\\)`));
    const [entry] = t.daemon.services.audit.list({ limit: 1 });
    assert.deepEqual([entry!.action, entry!.outcome, entry!.details?.code], ["deploy", "error", "not_found"]);
    const table = await ctl("audit", "--limit", "1");
    assert.match(table.stdout, new RegExp(`\\s+deploy\\s+generation ${generation}\\s+error\\s+.*not_found: no user ${nobody}`));
  });

  it("a sandbox that dies on start: deploy and start point at its logs, which show why", async () => {
    const added = await ctlJson<{ generation: { id: number } }>(
      "generations",
      "add",
      "--version",
      "broken",
      "--",
      process.execPath,
      "-e",
      "console.error('boom: no config'); process.exit(3)",
    );
    const deploy = await ctl("deploy", String(added.generation.id), "--users", erin);
    assert.equal(deploy.code, 1, explain(deploy));
    assert.match(
      deploy.stdout,
      new RegExp(
        `^✗ ${erin}\\s+start_timeout: sandbox hv-${erin}-b exited before it became healthy; live is unchanged, ` +
          `dev stays on generation ${added.generation.id} and swap refuses it while it is unhealthy \\(see hypervisorctl logs ${erin} dev; ` +
          `hypervisorctl deploy \\d+ --users ${erin} puts generation \\d+ back\\)`,
        "m",
      ),
    );
    const start = await ctl("sandboxes", "start", erin, "dev");
    assert.equal(start.code, 1, explain(start));
    assert.match(start.stderr, new RegExp(`^error: start_timeout: .*\\(see hypervisorctl logs ${erin} dev\\)`));
    const logs = await ctl("logs", erin, "dev");
    assert.equal(logs.code, 0, explain(logs));
    assert.match(logs.stdout, /^boom: no config$/m);
  });

  it("logs of a hostile sandbox: its escape sequences reach the terminal as text, --json keeps them exact", async () => {
    // OSC 52 (set the clipboard), a screen clear, a carriage return that would hide the line, a C1 CSI.
    const hostile = "\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2Jpwned\rok \u009b31m";
    const added = await ctlJson<{ generation: { id: number } }>(
      "generations",
      "add",
      "--version",
      "hostile-logs",
      "--",
      process.execPath,
      "-e",
      `console.log(${JSON.stringify(hostile)}); process.exit(3)`,
    );
    const deploy = await ctl("deploy", String(added.generation.id), "--users", erin);
    assert.equal(deploy.code, 1, explain(deploy));
    const logs = await ctl("logs", erin, "dev");
    assert.equal(logs.code, 0, explain(logs));
    assert.doesNotMatch(logs.stdout, /[\x00-\x08\x0b-\x1f\x7f-\x9f]/, "no control character reaches the terminal");
    assert.match(logs.stdout, /^\\x1b\]52;c;cm0gLXJmIH4=\\x07\\x1b\[2Jpwned\\x0dok \\x9b31m$/m, "shown, visibly, as what it was");
    const json = await ctlJson<{ lines: string[] }>("logs", erin, "dev");
    assert.ok(json.lines.includes(hostile), "a script gets the exact line");
  });

  it("names the hypervisorctl command to run in its hints", async () => {
    const rollback = await ctl("rollback", "--users", dave);
    assert.equal(rollback.code, 1, explain(rollback));
    assert.match(rollback.stdout, /no_known_good: .*\(mark one with hypervisorctl generations known-good ID\)/);
    assert.doesNotMatch(rollback.stdout + rollback.stderr, /POST \//);
  });

  it("users remove stops and removes the sandboxes and keeps their data; --purge deletes it", async () => {
    const dataOf = (user: string, slot: "a" | "b") => join(sandboxDataDir(t.stateDir), `${user}-${slot}`);
    assert.equal((await ctl("sandboxes", "start", carol, "live")).code, 0);
    assert.equal((await ctl("sandboxes", "start", alice, "live")).code, 0);
    t.daemon.services.sessions.create(carol, "full");

    const kept = await ctl("users", "remove", carol);
    assert.equal(kept.code, 0, explain(kept));
    assert.equal(kept.stdout, `user ${carol} removed; its sandbox data is kept (--purge deletes it)\n`);
    assert.equal(t.daemon.services.users.hasUser(carol), false);
    assert.equal(await t.daemon.services.runtime.inspect(carol, "a"), undefined, "no sandbox left");
    assert.equal(t.daemon.services.sessions.count(carol), 0);
    assert.ok(existsSync(dataOf(carol, "a")), "its data stays");

    const purged = await ctlJson<{ name: string; removed: boolean; purged: boolean }>("users", "remove", alice, "--purge", "--yes");
    assert.deepEqual(purged, { name: alice, removed: true, purged: true });
    assert.equal(existsSync(dataOf(alice, "a")), false, "--purge deletes the data");
    assert.deepEqual(
      t.daemon.services.audit.list({ limit: 2 }).map((e) => [e.action, e.target]),
      [
        ["user.remove.purge", alice],
        ["user.remove", carol],
      ],
    );
    const gone = await ctl("users", "remove", carol);
    assert.equal(gone.code, 1, explain(gone));
    assert.match(gone.stderr, /^error: not_found: no user /);
  });

  it("completion: a bash and a zsh script from the command table that complete commands and options", async () => {
    for (const shell of ["bash", "zsh"]) {
      const r = await ctl("completion", shell);
      assert.equal(r.code, 0, explain(r));
      assert.match(r.stdout, /complete -F _hypervisorctl hypervisorctl\n$/);
    }
    const script = (await ctl("completion", "bash")).stdout;
    const complete = (...words: string[]) => {
      const probe = `${script}\nCOMP_WORDS=(hypervisorctl ${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${words.length}; _hypervisorctl; echo "\${COMPREPLY[*]}"`;
      const out = spawnSync("bash", ["-c", probe], { encoding: "utf8" });
      assert.equal(out.status, 0, out.stderr);
      return out.stdout.trim().split(" ");
    };
    assert.deepEqual(complete("us"), ["users"]);
    assert.deepEqual(complete("users", "").sort(), ["add", "disable", "enable", "list", "move", "purge", "remove", "sessions"]);
    assert.deepEqual(complete("users", "sessions", ""), ["revoke"]);
    assert.ok(complete("sandboxes", "stop", "--").includes("--all"));
    assert.ok(complete("--socket", "/x", "logs", "a", "live", "--f").includes("--follow"), "an option's value is not a command word");
    const bad = await ctl("completion", "fish");
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /SHELL must be bash or zsh/);
  });
});

import assert from "node:assert/strict";
import Database from "better-sqlite3";
import { accessSync, constants, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { migrations } from "../../hypervisor/db/migrations.js";
import { referenceSandboxCommand } from "../../hypervisor/generations/default-generation.js";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { CLI, explain, runCli } from "../helpers/hypervisorctl.js";
import { testUser } from "../helpers/run-id.js";

const TOKEN = "hypervisorctl-test-token-0123456789";
const sandbox = referenceSandboxCommand();
/** The reference sandbox under another `--version=`: a process-runtime generation. */
const commandOf = (version: string) => [...sandbox.command.filter((a) => !a.startsWith("--version=")), `--version=${version}`];
const API_ERROR = /^error: [a-z_]+: .+ \(request [0-9a-f-]{36}\)$/m;

const run = runCli;

describe("hypervisorctl against a running daemon (process runtime)", () => {
  let t: TestDaemon;
  const secrets = tempDir("hv-ctl-secret-");
  const tokenFile = join(secrets.path, "operator-token");
  const users = [testUser("ctl-a"), testUser("ctl-b"), testUser("ctl-c")];
  const [ua, ub, uc] = users as [string, string, string];
  let g1: number;
  let g2: number;
  let g3: number;

  /** hypervisorctl over the daemon's unix socket. */
  const ctl = (...args: string[]) => run(["--socket", t.daemon.operatorSocket, ...args]);
  const ctlJson = async <T = any>(...args: string[]): Promise<T> => {
    // Before the arguments: anything after `--` belongs to a generation's command.
    const r = await ctl("--json", ...args);
    assert.equal(r.code, 0, explain(r));
    return JSON.parse(r.stdout) as T;
  };
  const route = (user: string) => t.daemon.services.routing.route(user)!;
  const slotGeneration = (user: string, role: "live" | "dev") => t.daemon.services.users.slot(user, route(user)[role])!.generationId;

  before(async () => {
    writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
    t = await bootDaemon({
      env: {
        HYPERVISOR_OPERATOR_LISTEN: "127.0.0.1:0",
        HYPERVISOR_OPERATOR_TOKEN_FILE: tokenFile,
        HYPERVISOR_KNOWN_GOOD_AFTER_MS: "600000",
        HYPERVISOR_START_TIMEOUT_MS: "5000",
      },
    });
  });
  after(async () => {
    for (const user of users) for (const role of ["live", "dev"] as const) await t.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t.close();
    secrets.remove();
  });

  it("is an executable with a node shebang", () => {
    assert.match(readFileSync(CLI, "utf8"), /^#!\/usr\/bin\/env node\n/);
    accessSync(CLI, constants.X_OK);
  });

  it("prints help for the tool and for every command, exit 0", async () => {
    const main = await run(["--help"]);
    assert.equal(main.code, 0, explain(main));
    for (const command of [
      "status",
      "sandboxes start USER ROLE",
      "generations known-good ID",
      "deploy GEN",
      "swap",
      "rollback",
      "audit",
      "metrics",
      "invites create",
      "users add NAME",
      "backup FILE",
    ]) {
      assert.ok(main.stdout.includes(command), `the command list names ${command}`);
    }
    assert.match(main.stdout, /Exit codes/);
    const commands = [
      ["status"],
      ["sandboxes"],
      ["sandboxes", "list"],
      ["sandboxes", "start"],
      ["sandboxes", "stop"],
      ["sandboxes", "restart"],
      ["users"],
      ["users", "add"],
      ["invites"],
      ["invites", "create"],
      ["invites", "list"],
      ["generations"],
      ["generations", "list"],
      ["generations", "add"],
      ["generations", "known-good"],
      ["generations", "bad"],
      ["deploy"],
      ["swap"],
      ["rollback"],
      ["audit"],
      ["metrics"],
      ["backup"],
    ];
    const runs = await Promise.all(commands.map((c) => run([...c, "--help"])));
    runs.forEach((r, i) => {
      const name = commands[i]!.join(" ");
      assert.equal(r.code, 0, `${name} --help: ${explain(r)}`);
      assert.equal(r.stderr, "", name);
      const usage = name.replace(/^(sandboxes|generations) list$/, "$1 \\[list\\]");
      assert.match(
        r.stdout,
        new RegExp(`^(Usage: hypervisorctl \\[options\\] ${usage}|hypervisorctl ${name}: )`),
        `${name} --help shows its usage:\n${r.stdout}`,
      );
      assert.match(r.stdout, /--socket PATH/, `${name} --help lists the options`);
    });
    assert.match(runs[commands.findIndex((c) => c.join(" ") === "swap")]!.stdout, /--force/);
    assert.match(runs[commands.findIndex((c) => c.join(" ") === "rollback")]!.stdout, /--to GEN/);
    const viaHelp = await run(["help", "deploy"]);
    assert.equal(viaHelp.code, 0);
    assert.match(viaHelp.stdout, /Usage: hypervisorctl \[options\] deploy GEN/);
  });

  it("exits 2 on usage errors, saying what is wrong, and touches nothing", async () => {
    const auditBefore = t.daemon.services.audit.list({ limit: 1000 }).length;
    const cases: Array<[string[], RegExp]> = [
      [[], /Usage: hypervisorctl/],
      [["frobnicate"], /unknown command 'frobnicate'/],
      [["status", "--bogus"], /Unknown option '--bogus'/],
      [["swap", "--to", "3"], /swap does not take --to/],
      [["sandboxes", "start", ua], /sandboxes start needs 2 arguments/],
      [["sandboxes", "start", ua, "prod"], /ROLE must be live or dev/],
      [["sandboxes", "reboot"], /unknown sandboxes command 'reboot'/],
      [["users", "frob"], /unknown users command 'frob'/],
      [["users", "sessions"], /users sessions needs a command: revoke/],
      [["deploy", "latest"], /GEN must be a positive integer/],
      [["deploy", "2", "--users", ","], /--users needs at least one user name/],
      [["generations", "add"], /give either IMAGE, or --version V -- CMD/],
      [["generations", "add", "img", "--version", "1", "--", "x"], /give either IMAGE, or --version V -- CMD/],
      [["audit", "--limit", "-1"], /error:/],
      [["status", "--token", TOKEN], /never taken on the command line/],
      [["status", "--socket", "/x", "--url", "http://127.0.0.1:1"], /give --socket or --url, not both/],
    ];
    const withoutSocket: Array<[string[], RegExp]> = [
      [["status", "--url", "http://127.0.0.1:1"], /--url needs the operator token/],
      [["status", "--url", "ftp://x", "--token-file", tokenFile], /--url must be http/],
    ];
    const runs = await Promise.all([...cases.map(([args]) => ctl(...args)), ...withoutSocket.map(([args]) => run(args))]);
    for (const [i, [args, message]] of [...cases, ...withoutSocket].entries()) {
      const r = runs[i]!;
      assert.equal(r.code, 2, `${args.join(" ")}: ${explain(r)}`);
      assert.match(r.stderr, message, args.join(" "));
      if (args.length) assert.match(r.stderr, /^error: /, args.join(" "));
      assert.equal(r.stdout, "", `${args.join(" ")} prints nothing on stdout`);
    }
    assert.equal(t.daemon.services.audit.list({ limit: 1000 }).length, auditBefore, "no operator action ran");
  });

  it("status: a table, or the API's JSON with --json", async () => {
    const human = await ctl("status");
    assert.equal(human.code, 0, explain(human));
    assert.match(human.stdout, /^runtime\s+process$/m);
    assert.match(human.stdout, /^ready\s+yes/m);
    const json = await ctlJson("status");
    assert.equal(json.runtime, "process");
    assert.deepEqual(json.ready, { database: true, runtime: true });
    assert.equal(json.users, t.daemon.services.users.users().length);
    assert.equal(json.sandboxes.running, t.daemon.services.manager.runningCount());
  });

  it("users add: creates the user; a taken name fails with the API's error, exit 1", async () => {
    const first = await ctl("users", "add", ua);
    assert.equal(first.code, 0, explain(first));
    assert.match(first.stdout, new RegExp(`user ${ua} created: live in slot a, dev in slot b, generation \\d+`));
    for (const name of [ub, uc]) {
      const created = await ctlJson("users", "add", name);
      assert.equal(created.name, name);
    }
    for (const name of users) assert.ok(t.daemon.services.users.hasUser(name), name);
    g1 = slotGeneration(ua, "live");

    const taken = await ctl("users", "add", ua);
    assert.equal(taken.code, 1, explain(taken));
    assert.match(taken.stderr, API_ERROR);
    assert.match(taken.stderr, /^error: conflict: /);
    assert.equal(taken.stdout, "");
    const invalid = await ctl("users", "add", "Not A Name");
    assert.equal(invalid.code, 1, explain(invalid));
    assert.match(invalid.stderr, /^error: validation_failed: /);
  });

  it("sandboxes: start, stop, restart and list match the manager; an unknown user is exit 1", async () => {
    const started = await ctl("sandboxes", "start", ua, "live");
    assert.equal(started.code, 0, explain(started));
    assert.match(started.stdout, new RegExp(`^${ua} live: running \\(slot a, generation ${g1}, \\d+\\.\\d+\\.\\d+\\.\\d+:\\d+\\)$`, "m"));
    assert.ok(t.daemon.services.manager.isRunning(ua, route(ua).live));

    const listed = await ctlJson<{ sandboxes: { user: string; role: string; slot: string; state: string; generation: number }[] }>("sandboxes", "--user", ua);
    assert.deepEqual(
      listed.sandboxes.map((s) => [s.user, s.role, s.slot, s.state, s.generation]),
      [
        [ua, "live", route(ua).live, "running", g1],
        [ua, "dev", route(ua).dev, "not started", g1],
      ],
    );
    const all = await ctlJson<{ sandboxes: unknown[] }>("sandboxes", "list");
    assert.equal(all.sandboxes.length, 2 * t.daemon.services.users.users().length);
    const table = await ctl("sandboxes");
    assert.equal(table.code, 0);
    assert.match(table.stdout, /^USER\s+ROLE\s+SLOT\s+GEN\s+STATE\s+HEALTH\s+ENDPOINT\s+STARTED\s+DISK$/m);
    assert.match(
      table.stdout,
      new RegExp(
        `^${ua}\\s+live\\s+a\\s+${g1}\\s+running\\s+healthy\\s+\\d+\\.\\d+\\.\\d+\\.\\d+:\\d+\\s+\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\dZ\\s+measured$`,
        "m",
      ),
    );

    const stopped = await ctlJson("sandboxes", "stop", ua, "live");
    assert.equal(stopped.sandbox.state, "stopped");
    assert.equal(t.daemon.services.manager.isRunning(ua, route(ua).live), false);
    const restarted = await ctlJson("sandboxes", "restart", ua, "live");
    assert.equal(restarted.sandbox.state, "running");
    assert.ok(t.daemon.services.manager.isRunning(ua, route(ua).live));

    const unknown = await ctl("sandboxes", "start", testUser("nobody"), "live");
    assert.equal(unknown.code, 1, explain(unknown));
    assert.match(unknown.stderr, API_ERROR);
    assert.match(unknown.stderr, new RegExp(`^error: not_found: no user ${testUser("nobody")} `));
    const unknownList = await ctl("sandboxes", "--user", testUser("nobody"));
    assert.equal(unknownList.code, 1, explain(unknownList));
  });

  it("rollback with nothing known-good fails per user with the reason, exit 1", async () => {
    const r = await ctl("rollback", "--users", `${ua},${ub}`);
    assert.equal(r.code, 1, explain(r));
    for (const user of [ua, ub]) assert.match(r.stdout, new RegExp(`^✗ ${user}\\s+no_known_good: there is no known-good generation`, "m"));
    assert.match(r.stdout, /^rollback: 0 of 2 users ok, 2 failed in \d+ ms$/m);
    assert.equal(slotGeneration(ua, "live"), g1, "live is untouched");
  });

  it("generations: add (process command after --), list, known-good and bad, checked against the store", async () => {
    const added = await ctl("generations", "add", "--version", "ctl-2", "--", ...commandOf("ctl-2"));
    assert.equal(added.code, 0, explain(added));
    const m = /^generation (\d+) recorded as candidate: version ctl-2 \(process\)$/m.exec(added.stdout);
    assert.ok(m, added.stdout);
    g2 = Number(m[1]);
    assert.deepEqual(t.daemon.services.generations.require(g2).command, commandOf("ctl-2"), "arguments after -- reach the API unchanged, --version= included");
    const third = await ctlJson("generations", "add", "--version", "ctl-3", "--", ...commandOf("ctl-3"));
    g3 = third.generation.id;
    assert.equal(third.generation.state, "candidate");

    const listed = await ctlJson<{ generations: { id: number; state: string; version: string }[] }>("generations");
    assert.deepEqual(
      listed.generations.map((g) => [g.id, g.state, g.version]),
      t.daemon.services.generations.list().map((g) => [g.id, g.state, g.version]),
    );
    const table = await ctl("generations", "list");
    assert.match(table.stdout, /^ID\s+STATE\s+VERSION\s+RUNTIME\s+LIVE\s+DEV\s+CREATED\s+SOURCE$/m);
    assert.match(table.stdout, new RegExp(`^${g2}\\s+candidate\\s+ctl-2\\s+process\\s+0\\s+0\\s`, "m"));

    const bad = await ctl("generations", "bad", String(g3));
    assert.equal(bad.code, 0, explain(bad));
    assert.equal(bad.stdout, `generation ${g3} is now bad\n`);
    assert.equal(t.daemon.services.generations.require(g3).state, "bad");

    const image = await ctl("generations", "add", "localhost/hypervisor-sandbox:latest");
    assert.equal(image.code, 2, "the process runtime takes a command, not an image");
    assert.match(
      image.stderr,
      /^error: this hypervisor runs the process runtime, which takes a command, not an image: hypervisorctl generations add --version V -- /,
    );
    const missing = await ctl("generations", "known-good", "9999");
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, API_ERROR);
  });

  it("deploy and swap across 3 users print live progress, one line per user, then a summary", async () => {
    const deploy = await ctl("deploy", String(g2), "--users", users.join(","));
    assert.equal(deploy.code, 0, explain(deploy));
    for (const user of users) {
      assert.match(deploy.stdout, new RegExp(`^✓ ${user}\\s+dev ${route(user).dev}  gen ${g1}→${g2}  \\d+(\\.\\d)? m?s$`, "m"));
      assert.equal(slotGeneration(user, "dev"), g2);
    }
    assert.match(deploy.stdout, /^deploy: 3 of 3 users ok in \d+(\.\d)? m?s$/m);
    const finished = deploy.stdout
      .trim()
      .split("\n")
      .filter((l) => !l.startsWith("… "));
    assert.equal(finished.length, 4, deploy.stdout);
    for (const user of users) assert.match(deploy.stdout, new RegExp(`^… ${user}\\s+starting  \\d+ ms$`, "m"), "each user's start is shown as it begins");

    const before = Object.fromEntries(users.map((u) => [u, route(u)]));
    const swap = await ctl("swap", "--users", users.join(","));
    assert.equal(swap.code, 0, explain(swap));
    const lines = swap.stdout.trim().split("\n");
    assert.equal(lines.length, 4, swap.stdout);
    for (const user of users) {
      assert.match(swap.stdout, new RegExp(`^✓ ${user}\\s+${before[user]!.live}→${before[user]!.dev}  gen ${g2}  \\d+ ms$`, "m"));
      assert.equal(route(user).live, before[user]!.dev, "the route flipped");
      assert.equal(slotGeneration(user, "live"), g2);
    }
    assert.match(lines.at(-1)!, /^swap: 3 of 3 users ok in \d+ ms$/);
  });

  it("swap --json prints the API's final result; a refused whole call is exit 1", async () => {
    const before = route(ua);
    const result = await ctlJson<{ ok: boolean; results: { user: string; ok: boolean; from: { slot: string }; to: { slot: string; generation: number } }[] }>(
      "swap",
      "--users",
      ua,
    );
    assert.equal(result.ok, true);
    assert.deepEqual(
      result.results.map((r) => [r.user, r.ok, r.from.slot, r.to.slot, r.to.generation]),
      [[ua, true, before.live, before.dev, g1]],
    );
    assert.equal(route(ua).live, before.dev);
    const back = await ctlJson("swap", "--users", ua);
    assert.equal(back.ok, true);
    assert.equal(slotGeneration(ua, "live"), g2);

    const badTarget = await ctl("deploy", String(g3), "--users", ua);
    assert.equal(badTarget.code, 1, explain(badTarget));
    assert.match(badTarget.stderr, API_ERROR);
    assert.match(badTarget.stderr, new RegExp(`^error: conflict: generation ${g3} is marked bad`));
    const badJson = await ctl("--json", "deploy", String(g3), "--users", ua);
    assert.equal(badJson.code, 1, explain(badJson));
    assert.equal(JSON.parse(badJson.stdout).error.code, "conflict", "--json prints the API's error body on stdout");
    assert.match(badJson.stderr, API_ERROR);
    const unknownUser = await ctl("swap", "--users", `${ua},${testUser("nobody")}`);
    assert.equal(unknownUser.code, 1, explain(unknownUser));
    assert.match(unknownUser.stderr, /^error: not_found: /);
    assert.equal(slotGeneration(ua, "live"), g2, "nothing changed");
  });

  it("rollback goes back to the known-good generation, warm or cold, with progress and --json", async () => {
    const marked = await ctlJson("generations", "known-good", String(g1));
    assert.equal(marked.generation.state, "known-good");
    const r = await ctl("rollback", "--users", `${ua},${ub}`);
    assert.equal(r.code, 0, explain(r));
    // ua's old live still runs (a route flip); ub's never ran, so it is started first.
    for (const [user, path] of [
      [ua, "warm"],
      [ub, "cold"],
    ]) {
      assert.match(r.stdout, new RegExp(`^✓ ${user}\\s+[ab]→[ab]  gen ${g1}  ${path}  \\d+(\\.\\d)? m?s$`, "m"));
      assert.equal(slotGeneration(user!, "live"), g1);
    }
    assert.match(r.stdout, /^rollback: 2 of 2 users ok in \d+(\.\d)? m?s$/m);

    const json = await ctlJson<{ ok: boolean; results: { user: string; to: { generation: number }; path: string }[] }>(
      "rollback",
      "--users",
      uc,
      "--to",
      String(g1),
    );
    assert.equal(json.ok, true);
    assert.deepEqual(
      json.results.map((x) => [x.user, x.to.generation, x.path]),
      [[uc, g1, "cold"]],
    );
    assert.equal(slotGeneration(uc, "live"), g1);
  });

  it("invites create and list", async () => {
    const created = await ctl("invites", "create", "--hours", "2");
    assert.equal(created.code, 0, explain(created));
    const shown =
      /^invite \d+ created, valid until .*; the code is shown only now:\n {2}(\S{16,})\nsend the invitee this link, which fills it in:\n {2}(\S+)\nnote: registration is open /.exec(
        created.stdout,
      );
    assert.ok(shown, created.stdout);
    assert.equal(shown[2], `http://localhost:8080/register?invite=${encodeURIComponent(shown[1]!)}`, "the register URL carries the code");
    const json = await ctlJson<{ id: number; code: string; expiresAt: string }>("invites", "create");
    const listed = await ctlJson<{ invites: { id: number; state: string }[] }>("invites", "list");
    assert.deepEqual(
      listed.invites.map((i) => [i.id, i.state]).sort(),
      t.daemon.services.invites
        .list()
        .map((i) => [i.id, i.state])
        .sort(),
    );
    assert.ok(listed.invites.some((i) => i.id === json.id && i.state === "unused"));
    assert.doesNotMatch(JSON.stringify(listed), new RegExp(json.code), "the list never shows codes");
    const table = await ctl("invites", "list");
    assert.match(table.stdout, new RegExp(`^${json.id}\\s+unused\\s+operator:unix\\s`, "m"));
  });

  it("audit shows the newest entries first, as recorded", async () => {
    const json = await ctlJson<{ entries: { id: number; action: string }[] }>("audit", "--limit", "5");
    assert.deepEqual(
      json.entries.map((e) => [e.id, e.action]),
      t.daemon.services.audit.list({ limit: 5 }).map((e) => [e.id, e.action]),
    );
    assert.equal(json.entries[0]!.action, "invite.create");
    const table = await ctl("audit", "--limit", "3");
    assert.equal(table.code, 0);
    const lines = table.stdout.trim().split("\n");
    assert.equal(lines.length, 4, table.stdout);
    assert.match(lines[0]!, /^AT\s+ACTOR\s+ACTION\s+TARGET\s+OUTCOME\s+DURATION\s+SOURCE\s+REASON$/);
    assert.match(lines[1]!, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\s+operator:unix\s+invite\.create\s/);
  });

  it("metrics prints the Prometheus text", async () => {
    const r = await ctl("metrics");
    assert.equal(r.code, 0, explain(r));
    assert.match(r.stdout, /^# TYPE hypervisor_swap_duration_seconds histogram$/m);
    const count = /^hypervisor_swap_duration_seconds_count\{outcome="ok"\} (\d+)$/m.exec(r.stdout);
    assert.ok(count && Number(count[1]) >= 5, "the swaps above are counted");
  });

  it("backup writes a consistent copy of the database to a new FILE, mode 0600, and never overwrites one", async () => {
    const file = join(secrets.path, "before-upgrade.db");
    const r = await ctl("backup", file);
    assert.equal(r.code, 0, explain(r));
    assert.match(r.stdout, new RegExp(`^backup of schema version ${migrations.length} written to ${file} \\(\\d+ bytes\\)\n$`));
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const copy = new Database(file, { readonly: true, fileMustExist: true });
    try {
      const users = (copy.prepare("SELECT name FROM users ORDER BY name").all() as { name: string }[]).map((u) => u.name);
      assert.deepEqual(users, t.daemon.services.users.users().sort(), "the copy holds the users the daemon serves");
      assert.equal((copy.pragma("integrity_check") as { integrity_check: string }[])[0]!.integrity_check, "ok");
    } finally {
      copy.close();
    }
    assert.deepEqual(
      t.daemon.services.audit.list({ limit: 1 }).map((e) => [e.action, e.outcome, e.actor]),
      [["database.backup", "ok", "operator:unix"]],
    );
    assert.equal(readdirSync(t.stateDir).filter((name) => name.includes("backup")).length, 0, "the daemon keeps no copy of its own");

    const before = readFileSync(file);
    const again = await ctl("backup", file);
    assert.equal(again.code, 2, "an existing FILE is bad input");
    assert.match(again.stderr, /^error: .*before-upgrade\.db already exists: a backup is written to a new file only/);
    assert.deepEqual(readFileSync(file), before, "the existing file is left as it was");
  });

  it("reaches the TCP listener with a token file (flag or environment), never without", async () => {
    const url = `http://127.0.0.1:${t.daemon.operatorAddress!.port}`;
    const viaFlag = await run(["--url", url, "--token-file", tokenFile, "status", "--json"]);
    assert.equal(viaFlag.code, 0, explain(viaFlag));
    assert.equal(JSON.parse(viaFlag.stdout).runtime, "process");
    const viaEnv = await run(["--url", url, "users", "add", "--json", testUser("ctl-tcp")], { HYPERVISOR_OPERATOR_TOKEN_FILE: tokenFile });
    assert.equal(viaEnv.code, 0, explain(viaEnv));
    assert.equal(t.daemon.services.audit.list({ limit: 1 })[0]!.actor, "operator:token");

    const wrongFile = join(secrets.path, "wrong-token");
    writeFileSync(wrongFile, "not-the-token-0123456789\n");
    const wrong = await run(["--url", url, "--token-file", wrongFile, "status"]);
    assert.equal(wrong.code, 1, explain(wrong));
    assert.match(wrong.stderr, /^error: unauthorized: /);
    const missingFile = await run(["--url", url, "--token-file", join(secrets.path, "absent"), "status"]);
    assert.equal(missingFile.code, 1, explain(missingFile));
    assert.match(missingFile.stderr, /cannot read the token file/);
  });

  it("finds the socket from HYPERVISOR_OPERATOR_SOCKET or HYPERVISOR_STATE_DIR, and says so when it is not there", async () => {
    const viaSocketEnv = await run(["status", "--json"], { HYPERVISOR_OPERATOR_SOCKET: t.daemon.operatorSocket });
    assert.equal(viaSocketEnv.code, 0, explain(viaSocketEnv));
    const viaStateDir = await run(["status", "--json"], { HYPERVISOR_STATE_DIR: t.stateDir });
    assert.equal(viaStateDir.code, 0, explain(viaStateDir));
    const nowhere = await run(["status"], { HYPERVISOR_STATE_DIR: secrets.path });
    assert.equal(nowhere.code, 1, explain(nowhere));
    assert.match(
      nowhere.stderr,
      new RegExp(`^error: no operator socket at ${join(secrets.path, "operator.sock")} \\(from HYPERVISOR_STATE_DIR\\): is the hypervisor running\\?`),
    );
  });
});

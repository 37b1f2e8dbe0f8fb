// What an operator meets when a step is dangerous or a command line is wrong: guard rails that
// ask for --yes (?confirm=true) and say what would follow, suggestions for near misses, and the
// API's refusals named as the CLI names them. On the fake runtime: no sandbox runs here.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { FakeRuntime } from "../../hypervisor/runtime/fake-runtime.js";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { CLI, explain, runCli, startCli, waitForOutput, type CliRun } from "../helpers/hypervisorctl.js";
import { repoRoot } from "../helpers/paths.js";
import { testUser } from "../helpers/run-id.js";

describe("hypervisorctl and the operator API: guard rails and plain answers", () => {
  let t: TestDaemon;
  const scratch = tempDir("hv-ctl-guards-");
  const ctl = (...args: string[]) => runCli(["--socket", t.daemon.operatorSocket, ...args]);
  const generations = () => t.daemon.services.generations;
  const lastAudit = () => t.daemon.services.audit.list({ limit: 1 })[0]!;

  before(async () => {
    t = await bootDaemon({ runtime: new FakeRuntime() });
  });
  after(async () => {
    await t.close();
    scratch.remove();
  });

  it("marks bad the only known-good generation users run live only with --yes, after saying what follows", async () => {
    const [u1, u2] = [testUser("guard-a"), testUser("guard-b")];
    for (const u of [u1, u2]) assert.equal((await ctl("users", "add", u)).code, 0);
    const g1 = t.daemon.services.routing.generationOf(u1, "live");
    assert.equal((await ctl("generations", "known-good", String(g1))).code, 0);

    const refused = await ctl("generations", "bad", String(g1));
    assert.equal(refused.code, 1, explain(refused));
    assert.match(
      refused.stderr,
      new RegExp(
        `^error: confirmation_required: generation ${g1} is the only known-good generation and runs live for (${u1}, ${u2}|${u2}, ${u1}): ` +
          "marked bad, it is never deployed again and a rollback of those users fails with no_known_good until another generation is marked known-good " +
          "\\(run it again with --yes to go ahead\\) \\(request [0-9a-f-]{36}\\)$",
        "m",
      ),
    );
    assert.equal(generations().require(g1).state, "known-good", "nothing changed");
    assert.deepEqual([lastAudit().action, lastAudit().outcome, lastAudit().details?.code], ["generation.bad", "error", "confirmation_required"]);

    const api = await t.operator.post(`/generations/${g1}/bad`);
    assert.equal(api.status, 409);
    assert.equal(api.body.error.code, "confirmation_required");
    assert.match(api.body.error.message, /\(send it again with \?confirm=true to go ahead\)$/);

    const confirmed = await ctl("generations", "bad", String(g1), "--yes");
    assert.equal(confirmed.code, 0, explain(confirmed));
    assert.equal(generations().require(g1).state, "bad");

    // With another known-good generation to roll back to, there is nothing to confirm.
    assert.equal((await t.operator.post(`/generations/${g1}/known-good`)).status, 200);
    const other = generations().add({ runtime: "fake", command: ["/bin/true", "--version=guard-2"], version: "guard-2" });
    assert.equal((await t.operator.post(`/generations/${other.id}/known-good`)).status, 200);
    const plain = await ctl("generations", "bad", String(g1));
    assert.equal(plain.code, 0, explain(plain));
    assert.equal(generations().require(g1).state, "bad");
    assert.equal((await t.operator.post(`/generations/${g1}/known-good`)).status, 200);
  });

  it("deletes a user's data (remove --purge, purge) only with --yes, after saying what it deletes", async () => {
    const [dora, fred] = [testUser("guard-dora"), testUser("guard-fred")];
    for (const u of [dora, fred]) assert.equal((await ctl("users", "add", u)).code, 0);

    const refused = await ctl("users", "remove", dora, "--purge");
    assert.equal(refused.code, 1, explain(refused));
    assert.match(
      refused.stderr,
      new RegExp(
        `^error: confirmation_required: removing ${dora} with purge deletes its live and dev data for good, .*\\(run it again with --yes to go ahead\\)`,
      ),
    );
    assert.ok(t.daemon.services.users.hasUser(dora), "the user is still there");
    assert.equal((await t.operator.send("DELETE", `/users/${dora}?purge=true`)).status, 409);
    const removed = await ctl("users", "remove", dora, "--purge", "--yes");
    assert.equal(removed.code, 0, explain(removed));
    assert.equal(t.daemon.services.users.hasUser(dora), false);

    assert.equal((await ctl("users", "remove", fred)).code, 0, "removal that keeps the data asks nothing");
    const purge = await ctl("users", "purge", fred);
    assert.equal(purge.code, 1, explain(purge));
    assert.match(purge.stderr, new RegExp(`confirmation_required: purging ${fred} deletes the live and dev data it left, on every host, for good`));
    assert.ok(t.daemon.services.users.removedUser(fred), "its data is still kept");
    assert.equal((await t.operator.post(`/users/${fred}/purge`)).status, 409);
    const purged = await ctl("users", "purge", fred, "--yes");
    assert.equal(purged.code, 0, explain(purged));
    assert.equal(t.daemon.services.users.removedUser(fred), undefined);
    // An unknown name is told as such, not asked to confirm.
    assert.equal((await t.operator.post(`/users/${testUser("guard-nobody")}/purge`)).status, 404);
  });

  it("suggests the command meant for a near miss, and names the next command", async () => {
    const cases: Array<[string[], RegExp]> = [
      [["user", "list"], /^error: unknown command 'user' \(did you mean 'hypervisorctl users list'\?\)$/m],
      [["sandboxs"], /^error: unknown command 'sandboxs' \(did you mean 'hypervisorctl sandboxes'\?\)$/m],
      [["generatoins", "frob"], /^error: unknown command 'generatoins' \(did you mean 'hypervisorctl generations'\?\)$/m],
      [["users", "lsit"], /^error: unknown users command 'lsit' \(did you mean 'users list'\? /m],
      [["frobnicate"], /^error: unknown command 'frobnicate'$/m],
    ];
    for (const [args, message] of cases) {
      const r = await ctl(...args);
      assert.equal(r.code, 2, `${args.join(" ")}: ${explain(r)}`);
      assert.match(r.stderr, message, args.join(" "));
    }
    const deploy = await ctl("deploy", "999999");
    assert.equal(deploy.code, 1, explain(deploy));
    assert.match(deploy.stderr, /^error: not_found: no generation 999999 \(hypervisorctl generations lists them\)/);
  });

  it("writes --watch frames into a pipe without screen control codes, and over each other on a terminal", async () => {
    const watch = startCli(["--socket", t.daemon.operatorSocket, "status", "--watch"]);
    try {
      await waitForOutput(watch, (out) => out.split("hypervisorctl status, every 2 s").length > 2);
    } finally {
      watch.kill("SIGINT");
    }
    assert.doesNotMatch(watch.out(), /\x1b/, "no escape code in a pipe");

    // On a terminal (script(1) gives it one) each frame is drawn over the last.
    const command = [process.execPath, CLI, "--socket", t.daemon.operatorSocket, "status", "--watch"].map((a) => `'${a}'`).join(" ");
    const tty = spawn("script", ["-qfec", command, "/dev/null"], { stdio: ["ignore", "pipe", "pipe"] });
    let screen = "";
    tty.stdout.on("data", (c: Buffer) => (screen += c.toString()));
    try {
      await new Promise<void>((resolve, reject) => {
        tty.stdout.on("data", () => screen.includes("every 2 s") && resolve());
        tty.once("exit", (code) => reject(new Error(`script exited with ${code}: ${screen}`)));
      });
    } finally {
      tty.kill("SIGKILL");
    }
    assert.ok(screen.includes("\x1b[H\x1b[2J"), `cursor home and erase display on a terminal: ${JSON.stringify(screen)}`);
  });

  it("says plainly that a backup FILE exists, as bad input", async () => {
    const file = join(scratch.path, "taken.db");
    writeFileSync(file, "earlier copy");
    const r = await ctl("backup", file);
    assert.equal(r.code, 2, explain(r));
    assert.match(
      r.stderr,
      new RegExp(`^error: ${file} already exists: a backup is written to a new file only, so name another \\(or move that one away\\)$`, "m"),
    );
  });

  it("says invites are not needed under open registration", async () => {
    const r = await ctl("invites", "create");
    assert.equal(r.code, 0, explain(r));
    assert.match(r.stdout, /^note: registration is open \(HYPERVISOR_REGISTRATION=open\): anyone can sign up without an invite/m);
  });

  it("refuses relative paths in a process generation when it is added, and an image in the CLI's own terms", async () => {
    const count = generations().list().length;
    const program = await ctl("generations", "add", "--version", "rel-1", "--", "node", "/srv/server.js");
    assert.equal(program.code, 2, explain(program));
    assert.match(program.stderr, /^error: 'node' is a relative path: the sandbox runs in its own directory, so give the program as an absolute path/);
    const script = await ctl("generations", "add", "--version", "rel-2", "--", process.execPath, "dist/sandbox/server.js");
    assert.equal(script.code, 2, explain(script));
    assert.match(script.stderr, /^error: 'dist\/sandbox\/server\.js' is a relative path/);
    for (const command of [
      ["node", "/srv/server.js"],
      [process.execPath, "dist/sandbox/server.js"],
      [process.execPath, "./server.js"],
    ]) {
      const api = await t.operator.post("/generations", { command, version: "rel-api" });
      assert.equal(api.status, 400, JSON.stringify(api.body));
      assert.equal(api.body.error.code, "validation_failed");
      assert.match(api.body.error.message, /relative path|must be an absolute path/);
    }
    const flagsAndUrls = await t.operator.post("/generations", {
      command: [process.execPath, "/srv/s.js", "--url=http://x/y", "-e", "a/b c"],
      version: "ok-args",
    });
    assert.equal(flagsAndUrls.status, 201, "flags, key=value and text with spaces are not paths");
    assert.equal(generations().list().length, count + 1);

    const image = await ctl("generations", "add", "localhost/hypervisor-sandbox:latest");
    assert.equal(image.code, 2, explain(image));
    assert.match(
      image.stderr,
      /^error: this hypervisor runs the fake runtime, which takes a command, not an image: hypervisorctl generations add --version V -- \/absolute\/path\/to\/program ARGS\.\.\.$/m,
    );
  });

  it("answers a body that is not JSON with 415, and audits a refusal with the code the caller got", async () => {
    const before = t.daemon.services.users.users().length;
    const form = await t.operator.send("POST", "/users", '{"name":"x"}', { "content-type": "application/x-www-form-urlencoded" }, { bare: true });
    assert.equal(form.status, 415, JSON.stringify(form.body));
    assert.equal(form.body.error.code, "unsupported_media_type");
    assert.match(form.body.error.message, /send Content-Type: application\/json/);
    const untyped = await t.operator.send("POST", "/users", '{"name":"x"}', {}, { bare: true });
    assert.equal(untyped.status, 415);
    assert.equal(t.daemon.services.users.users().length, before, "nothing was created");
    assert.equal(lastAudit().details?.code, "unsupported_media_type");

    const invalid: CliRun = await ctl("users", "add", "Not_A_Name");
    assert.equal(invalid.code, 1, explain(invalid));
    const code = /^error: ([a-z_]+): /.exec(invalid.stderr)?.[1];
    assert.equal(code, "validation_failed");
    assert.deepEqual([lastAudit().action, lastAudit().details?.code], ["operator.refused", code], "the audit names the code the CLI printed");
    const table = await ctl("audit", "--limit", "1");
    assert.match(table.stdout, /operator\.refused .*\bvalidation_failed\b/);
  });

  it("answers a known path asked with the wrong method with 405 and Allow", async () => {
    for (const [method, path, allow] of [
      ["DELETE", "/sandboxes", "GET, HEAD"],
      ["GET", "/deploy", "POST"],
      ["PUT", "/users", "POST, GET, HEAD"],
    ] as const) {
      const r = await t.operator.send(method, path);
      assert.equal(r.status, 405, `${method} ${path}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.code, "method_not_allowed");
      assert.equal(r.headers.allow, allow, `${method} ${path}`);
      assert.match(r.body.error.message, new RegExp(`^${path} takes ${allow}, not ${method}`));
    }
    assert.equal((await t.operator.send("DELETE", "/no-such-thing")).status, 404);
  });

  it("finds the socket as the daemon would from any directory, and names where it looked", async () => {
    const elsewhere = join(scratch.path, "elsewhere");
    mkdirSync(elsewhere);
    const inDir = (env: Record<string, string>) =>
      new Promise<CliRun>((resolve, reject) => {
        const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HYPERVISOR_")));
        const child = spawn(process.execPath, [CLI, "status"], { cwd: elsewhere, env: { ...clean, ...env }, stdio: ["ignore", "pipe", "pipe"] });
        let stdout = "";
        let stderr = "";
        child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
        child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
        child.once("error", reject);
        child.once("close", (code) => resolve({ code, stdout, stderr }));
      });
    const relative = await inDir({ HYPERVISOR_STATE_DIR: "state" });
    assert.equal(relative.code, 1, explain(relative));
    assert.match(relative.stderr, new RegExp(`^error: no operator socket at ${join(elsewhere, "state", "operator.sock")} \\(from HYPERVISOR_STATE_DIR\\): `));
    // Without either variable: the checkout's ./var, as `npm start` makes it, whatever the directory.
    const byDefault = await inDir({});
    if (byDefault.code !== 0) {
      assert.match(
        byDefault.stderr,
        new RegExp(`at ${join(repoRoot, "var", "operator.sock")} \\(from the default state dir, ./var beside the hypervisor's dist/\\)`),
      );
    }
    assert.doesNotMatch(byDefault.stderr, new RegExp(elsewhere), "never the working directory's ./var");
  });
});

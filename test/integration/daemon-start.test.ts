import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { bootDaemon, daemonEnv, spawnDaemon, tempDir } from "../helpers/daemon.js";
import { runCli } from "../helpers/hypervisorctl.js";
import { repoRoot } from "../helpers/paths.js";
import { testUser } from "../helpers/run-id.js";

const MAIN = join(repoRoot, "dist/hypervisor/main.js");

/** `node dist/hypervisor/main.js` to its end, as an operator starts it by hand. */
const runMain = (args: string[], env: Record<string, string>) => runCli(args, env, [process.execPath, MAIN]);

describe("starting the daemon", () => {
  const dirs: Array<{ path: string; remove(): void }> = [];
  const fresh = () => {
    const dir = tempDir("hv-start-");
    dirs.push(dir);
    return dir.path;
  };
  after(() => dirs.forEach((d) => d.remove()));

  it("prints its usage for --help and starts nothing", async () => {
    const stateDir = join(fresh(), "never");
    const r = await runMain(["--help"], daemonEnv(stateDir));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^Usage: node dist\/hypervisor\/main\.js/);
    assert.match(r.stdout, /HYPERVISOR_PUBLIC_ORIGIN\s+origin users see/);
    assert.equal(existsSync(stateDir), false, "no state dir was made: no daemon ran");
    const wrong = await runMain(["--port", "80"], daemonEnv(stateDir));
    assert.equal(wrong.code, 2);
    assert.match(wrong.stderr, /unexpected argument '--port': settings are environment variables/);
  });

  it("refuses a public origin on an IP address, saying passkeys need a domain", async () => {
    const r = await runMain([], daemonEnv(fresh(), { HYPERVISOR_PUBLIC_ORIGIN: "http://127.0.0.1:8080" }));
    assert.equal(r.code, 2);
    assert.match(
      r.stderr,
      /^hypervisor: invalid configuration: HYPERVISOR_PUBLIC_ORIGIN: expected a host name, not an IP address: passkeys \(WebAuthn\) need a domain; on this machine use http:\/\/localhost:8080, got "http:\/\/127\.0\.0\.1:8080"\n$/,
    );
    const v6 = await runMain([], daemonEnv(fresh(), { HYPERVISOR_PUBLIC_ORIGIN: "https://[::1]" }));
    assert.equal(v6.code, 2);
    assert.match(v6.stderr, /not an IP address/);
  });

  it("says a wrong choice once, plainly", async () => {
    const r = await runMain([], daemonEnv(fresh(), { HYPERVISOR_RUNTIME: "docker" }));
    assert.equal(r.code, 2);
    assert.equal(r.stderr, 'hypervisor: invalid configuration: HYPERVISOR_RUNTIME: expected one of process, podman, got "docker"\n');
  });

  it("refuses another runtime on a state dir whose users run this one, and says what to do", async () => {
    const stateDir = fresh();
    const t = await bootDaemon({ stateDir });
    const user = testUser("switch");
    assert.equal((await t.operator.post("/users", { name: user })).status, 201);
    await t.close();
    const r = await runMain([], daemonEnv(stateDir, { HYPERVISOR_RUNTIME: "podman" }));
    assert.equal(r.code, 2, r.stderr);
    assert.match(
      r.stderr,
      /HYPERVISOR_RUNTIME: expected process, the runtime this state dir was used with: 1 user's slots run process generations, which podman cannot run/,
    );
    assert.match(r.stderr, /Start with HYPERVISOR_RUNTIME=process again .*or give podman a new HYPERVISOR_STATE_DIR/);
    // The same runtime starts as before.
    const again = await bootDaemon({ stateDir });
    assert.ok(again.daemon.services.users.hasUser(user));
    await again.close();
  });

  it("prints the URL to open when it has started", async () => {
    const stateDir = fresh();
    const daemon = await spawnDaemon(daemonEnv(stateDir));
    try {
      for (let i = 0; i < 100 && !daemon.output().includes("hypervisor: open"); i++) await new Promise((r) => setTimeout(r, 50));
      assert.match(
        daemon.output(),
        new RegExp(`^hypervisor: open http://localhost:8080 in a browser; operator socket ${join(stateDir, "operator.sock")}$`, "m"),
      );
    } finally {
      await daemon.kill("SIGTERM");
    }
  });
});

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { bootDaemon, daemonEnv, spawnDaemon, tempDir, type SpawnedDaemon } from "../helpers/daemon.js";
import { runCli, startCli, type CliRun } from "../helpers/hypervisorctl.js";
import { repoRoot } from "../helpers/paths.js";
import { freePort } from "../helpers/ports.js";
import { testUser } from "../helpers/run-id.js";

const MAIN = join(repoRoot, "dist/hypervisor/main.js");

/** `node dist/hypervisor/main.js` to its end, as an operator starts it by hand. */
const runMain = (args: string[], env: Record<string, string>) => runCli(args, env, [process.execPath, MAIN]);

/** A daemon that ought to refuse to start, run to its end; one that starts anyway is stopped (SIGTERM) after 10 s. */
async function runRefused(env: Record<string, string>): Promise<CliRun> {
  const child = startCli([], env, [process.execPath, MAIN]);
  let stderr = "";
  child.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
  const timer = setTimeout(() => child.kill("SIGTERM"), 10_000);
  const code = await new Promise<number | null>((resolve) => child.once("close", resolve));
  clearTimeout(timer);
  return { code, stdout: child.out(), stderr };
}

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
    assert.ok(again.daemon.services.routing.hasUser(user));
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

  it("runs one daemon per state dir: a second one is refused, naming the first's pid, and the first stays operable", async () => {
    const stateDir = fresh();
    const first = await spawnDaemon(daemonEnv(stateDir));
    try {
      // Another listen port, as an operator who starts a second daemon by mistake would give it.
      const second = await runRefused(daemonEnv(stateDir, { HYPERVISOR_LISTEN: `127.0.0.1:${await freePort()}` }));
      assert.equal(second.code, 2, second.stderr);
      assert.match(
        second.stderr,
        new RegExp(
          `^hypervisor: invalid configuration: HYPERVISOR_STATE_DIR: expected a state dir no other daemon uses: the hypervisor daemon with pid ${first.child.pid} runs on it`,
        ),
      );
      assert.ok(existsSync(join(stateDir, "operator.sock")), "the first daemon's operator socket is still there");
      assert.equal((await first.operator.get("/status")).status, 200, "and the first daemon still answers on it");
    } finally {
      await first.kill("SIGTERM");
    }
  });

  it("takes over the lock of a daemon that was killed (SIGKILL): nothing stale keeps the next one out", async () => {
    const stateDir = fresh();
    const killed = await spawnDaemon(daemonEnv(stateDir));
    await killed.kill("SIGKILL");
    assert.equal(readFileSync(join(stateDir, "daemon.pid"), "utf8").trim(), String(killed.child.pid), "the killed daemon left its pid file behind");
    let next: SpawnedDaemon | undefined;
    try {
      next = await spawnDaemon(daemonEnv(stateDir));
      assert.equal((await next.operator.get("/status")).status, 200);
      assert.equal(readFileSync(join(stateDir, "daemon.pid"), "utf8").trim(), String(next.child.pid));
    } finally {
      await next?.kill("SIGTERM");
    }
    assert.equal(existsSync(join(stateDir, "daemon.pid")), false, "a daemon that stops removes its pid file");
  });

  it("never takes over an operator socket another daemon (of another state dir) listens on", async () => {
    const stateDir = fresh();
    const first = await spawnDaemon(daemonEnv(stateDir));
    try {
      const socket = join(stateDir, "operator.sock");
      const other = await runRefused(daemonEnv(fresh(), { HYPERVISOR_OPERATOR_SOCKET: socket }));
      assert.equal(other.code, 2, other.stderr);
      assert.match(other.stderr, /^hypervisor: invalid configuration: HYPERVISOR_OPERATOR_SOCKET: expected a socket path no running daemon listens on/);
      assert.equal((await first.operator.get("/status")).status, 200, "the first daemon still answers on its socket");
    } finally {
      await first.kill("SIGTERM");
    }
  });

  it("refuses a second daemon in the same process too, and lets one start once the first has closed", async () => {
    const stateDir = fresh();
    const first = await bootDaemon({ stateDir });
    // One that starts anyway is closed again, so a failure here cannot leave it running.
    const refusal = await bootDaemon({ stateDir }).then(
      async (second) => {
        await second.close();
        return "a second daemon started";
      },
      (err: unknown) => (err as Error).message,
    );
    assert.match(
      refusal,
      new RegExp(`HYPERVISOR_STATE_DIR: expected a state dir no other daemon uses: the hypervisor daemon with pid ${process.pid} runs on it`),
    );
    assert.equal((await first.operator.get("/status")).status, 200);
    await first.close();
    await (await bootDaemon({ stateDir })).close();
  });
});

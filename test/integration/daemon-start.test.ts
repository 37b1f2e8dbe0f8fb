import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { bootDaemon, daemonEnv, spawnDaemon, tempDir, type SpawnedDaemon } from "../helpers/daemon.js";
import { runCli, startCli, type CliRun } from "../helpers/hypervisorctl.js";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
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

describe("on a terminal", () => {
  it("speaks to a person: readable log lines instead of JSON, and the start sentence", async () => {
    const dir = tempDir("hv-tty-");
    try {
      // script(1) gives the daemon a pseudo-terminal, as a shell in a terminal window does.
      const child = spawn("script", ["-qfec", `${process.execPath} ${MAIN} & echo "daemon pid $!"; wait`, "/dev/null"], {
        env: { ...process.env, ...daemonEnv(dir.path, { HYPERVISOR_LOG_LEVEL: "info" }) },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let output = "";
      child.stdout.on("data", (c: Buffer) => (output += c.toString()));
      const exited = new Promise((resolve) => child.once("exit", resolve));
      for (let i = 0; i < 400 && !output.includes("hypervisor: open"); i++) await sleep(50);
      const pid = Number(/daemon pid (\d+)/.exec(output)?.[1]);
      if (pid > 0) process.kill(pid, "SIGTERM");
      await exited;
      assert.match(output, /^hypervisor: open http:\/\/localhost:8080 in a browser; operator socket /m);
      assert.match(output, /^\[\d\d:\d\d:\d\d\] .*INFO.*hypervisor started: open http:\/\/localhost:8080 in a browser/m);
      assert.doesNotMatch(output, /^\{"level"/m, "no JSON lines on a terminal");
    } finally {
      dir.remove();
    }
  });

  it("keeps JSON lines for journald, files and pipes", async () => {
    const dir = tempDir("hv-json-");
    const daemon = await spawnDaemon(daemonEnv(dir.path, { HYPERVISOR_LOG_LEVEL: "info" }));
    try {
      for (let i = 0; i < 100 && !daemon.output().includes("hypervisor started"); i++) await sleep(50);
      const line = daemon
        .output()
        .split("\n")
        .find((l) => l.includes("hypervisor started"))!;
      assert.equal(JSON.parse(line).url, "http://localhost:8080");
    } finally {
      await daemon.kill("SIGTERM");
      dir.remove();
    }
  });
});

describe("changing the port", () => {
  const dirs: Array<{ path: string; remove(): void }> = [];
  const fresh = () => {
    const dir = tempDir("hv-port-");
    dirs.push(dir);
    return dir.path;
  };
  after(() => dirs.forEach((d) => d.remove()));

  /** The start line and what follows it, once the daemon answers. */
  async function started(env: Record<string, string>): Promise<{ output: string; stop(): Promise<unknown> }> {
    const daemon = await spawnDaemon(daemonEnv(fresh(), env));
    for (let i = 0; i < 100 && !daemon.output().includes("hypervisor: open"); i++) await sleep(50);
    return { output: daemon.output(), stop: () => daemon.kill("SIGTERM") };
  }

  it("with only HYPERVISOR_LISTEN set, opens at that port and registers there", async () => {
    const port = await freePort();
    const d = await started({ HYPERVISOR_LISTEN: `127.0.0.1:${port}` });
    try {
      assert.match(d.output, new RegExp(`^hypervisor: open http://localhost:${port} in a browser;`, "m"));
      assert.doesNotMatch(d.output, /hypervisor: warning: HYPERVISOR_PUBLIC_ORIGIN/);
      const origin = `http://localhost:${port}`;
      const client = new PublicClient(`http://127.0.0.1:${port}`, origin);
      const registered = await client.register(testUser("port"), new SoftwareAuthenticator(origin));
      assert.equal(registered.status, 201, registered.text);
    } finally {
      await d.stop();
    }
  });

  it("with only HYPERVISOR_PUBLIC_ORIGIN set, listens on the origin's port", async () => {
    const port = await freePort();
    const d = await started({ HYPERVISOR_LISTEN: "", HYPERVISOR_PUBLIC_ORIGIN: `http://localhost:${port}` });
    try {
      assert.match(d.output, new RegExp(`^hypervisor: open http://localhost:${port} in a browser;`, "m"));
      const health = await fetch(`http://127.0.0.1:${port}/_hv/healthz`);
      assert.equal(health.status, 200);
    } finally {
      await d.stop();
    }
  });

  it("says in a sentence naming both variables when a localhost origin and the listener name different ports", async () => {
    const port = await freePort();
    const d = await started({ HYPERVISOR_LISTEN: `127.0.0.1:${port}`, HYPERVISOR_PUBLIC_ORIGIN: "http://localhost:8080" });
    try {
      assert.match(
        d.output,
        new RegExp(
          `^hypervisor: warning: HYPERVISOR_PUBLIC_ORIGIN is http://localhost:8080 but HYPERVISOR_LISTEN serves port ${port}: .*front that forwards port 8080 to ${port}`,
          "m",
        ),
      );
    } finally {
      await d.stop();
    }
  });

  it("says nothing of a TLS front's origin on 443 before a listener on another port", async () => {
    const port = await freePort();
    const d = await started({ HYPERVISOR_LISTEN: `127.0.0.1:${port}`, HYPERVISOR_PUBLIC_ORIGIN: "https://sandbox.example.org" });
    try {
      assert.match(d.output, /^hypervisor: open https:\/\/sandbox\.example\.org in a browser;/m);
      assert.doesNotMatch(d.output, /warning/);
    } finally {
      await d.stop();
    }
  });

  it("refuses a port already in use with a readable configuration error, exit 2", async () => {
    const squatter = createServer();
    await new Promise<void>((resolve) => squatter.listen(0, "127.0.0.1", resolve));
    const { port } = squatter.address() as AddressInfo;
    try {
      const r = await runMain([], daemonEnv(fresh(), { HYPERVISOR_LISTEN: `127.0.0.1:${port}` }));
      assert.equal(r.code, 2, r.stderr);
      assert.match(
        r.stderr,
        new RegExp(
          `^hypervisor: invalid configuration: HYPERVISOR_LISTEN: expected an address this daemon can listen on \\(127\\.0\\.0\\.1:${port} is already in use by another program; stop that program or choose another port\\)`,
        ),
      );
      assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack trace");
    } finally {
      squatter.close();
    }
  });
});

describe("a daemon that cannot give process sandboxes networks of their own", () => {
  const dirs: Array<{ path: string; remove(): void }> = [];
  after(() => dirs.forEach((d) => d.remove()));
  // A host without iptables: the daemon finds no iptables-restore on its PATH.
  const withoutIptables = () => {
    const dir = tempDir("hv-nofence-");
    dirs.push(dir);
    mkdirSync(join(dir.path, "bin"));
    return { stateDir: join(dir.path, "state"), PATH: join(dir.path, "bin") };
  };

  it("refuses open registration unless HYPERVISOR_PROCESS_UNCONTAINED=accept, saying why on the terminal", async () => {
    const { stateDir, PATH } = withoutIptables();
    const r = await runMain([], { ...daemonEnv(stateDir, { HYPERVISOR_REGISTRATION: "open" }), PATH });
    assert.equal(r.code, 2, r.stderr);
    assert.match(
      r.stderr,
      /^hypervisor: invalid configuration: HYPERVISOR_PROCESS_UNCONTAINED: expected accept with HYPERVISOR_REGISTRATION=open, as process sandboxes have no network of their own: they can connect to the hypervisor's listeners and to each other's ports \(cannot give sandboxes networks of their own \(ip, nsenter, iptables\).*\); install what is missing \(apt-get install bubblewrap iptables iproute2/m,
    );
  });

  it("starts when the operator accepts it, and says what is not contained", async () => {
    const { stateDir, PATH } = withoutIptables();
    const daemon = await spawnDaemon({ ...daemonEnv(stateDir, { HYPERVISOR_REGISTRATION: "open", HYPERVISOR_PROCESS_UNCONTAINED: "accept" }), PATH });
    try {
      for (let i = 0; i < 100 && !daemon.output().includes("hypervisor: open"); i++) await sleep(50);
      assert.match(daemon.output(), /^hypervisor: warning: process sandboxes have no network of their own: .*iptables/m);
    } finally {
      await daemon.kill("SIGTERM");
    }
  });
});

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { OperatorClient } from "../helpers/operator-client.js";
import { repoRoot } from "../helpers/paths.js";
import { sandboxPids } from "../helpers/proc.js";
import { testUser } from "../helpers/run-id.js";
import { daemonEnv, tempDir } from "../helpers/daemon.js";

/** nobody: a daemon that is not root, as under the Debian unit (User=hypervisor). */
const UID = 65534;
const CAP_NET_ADMIN = 1n << 12n;

function capabilities(pid: number): { ambient: bigint; effective: bigint; inheritable: bigint } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const read = (name: string) => BigInt(`0x${new RegExp(`^${name}:\\s*([0-9a-f]+)$`, "m").exec(status)![1]}`);
  return { ambient: read("CapAmb"), effective: read("CapEff"), inheritable: read("CapInh") };
}

// The Debian unit gives the daemon CAP_NET_ADMIN as an ambient capability (egress rules), and an
// ambient capability passes to every child exec'd under the same uid: a process sandbox of such a
// daemon (uncontained, as that unit's hardening leaves bubblewrap no room) would hold
// CAP_NET_ADMIN and could rewrite the host's firewall. The daemon here runs as nobody with that
// one ambient capability, as the unit starts it; its sandbox must hold none.
describe("a daemon granted CAP_NET_ADMIN passes no capability to its sandboxes (process runtime, not root)", () => {
  const dir = tempDir();
  const state = join(dir.path, "state");
  const user = testUser("caps");
  let daemon: ChildProcess | undefined;
  let output = "";
  let operator: OperatorClient;

  before(async () => {
    chmodSync(dir.path, 0o755);
    for (const d of [state, `${state}-sandboxes`]) {
      mkdirSync(d);
      chownSync(d, UID, UID);
    }
    const env = daemonEnv(state, { HYPERVISOR_REGISTRATION: "invite" });
    daemon = spawn(
      "setpriv",
      [
        `--reuid=${UID}`,
        `--regid=${UID}`,
        "--clear-groups",
        "--inh-caps=+net_admin",
        "--ambient-caps=+net_admin",
        "--",
        process.execPath,
        join(repoRoot, "dist/hypervisor/main.js"),
      ],
      { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] },
    );
    daemon.stdout!.on("data", (c: Buffer) => (output += c.toString()));
    daemon.stderr!.on("data", (c: Buffer) => (output += c.toString()));
    operator = new OperatorClient({ socketPath: join(state, "operator.sock") });
    for (let i = 0; ; i++) {
      if (daemon.exitCode !== null) throw new Error(`the daemon exited: ${output}`);
      if (
        await operator.get("/status").then(
          (r) => r.status === 200,
          () => false,
        )
      )
        break;
      if (i > 300) throw new Error(`the daemon did not answer: ${output}`);
      await sleep(50);
    }
  });

  after(async () => {
    await operator?.post(`/sandboxes/${user}/live/stop`).catch(() => undefined);
    daemon?.kill("SIGKILL");
    await sleep(200);
    dir.remove();
  });

  it("holds CAP_NET_ADMIN itself, and its sandbox holds no capability at all", async () => {
    assert.equal(capabilities(daemon!.pid!).ambient & CAP_NET_ADMIN, CAP_NET_ADMIN, "the daemon runs as the unit starts it");
    assert.equal((await operator.post("/users", { name: user })).status, 201);
    const started = await operator.post(`/sandboxes/${user}/live/start`);
    assert.equal(started.status, 200, JSON.stringify(started.body));
    // Found from /proc (the processes whose environment names the user), not asked of the daemon.
    const pids = sandboxPids([user]);
    assert.ok(pids.length > 0, "the sandbox's processes");
    for (const pid of pids) assert.deepEqual(capabilities(pid), { ambient: 0n, effective: 0n, inheritable: 0n }, `process ${pid} of the sandbox`);
  });
});

import assert from "node:assert/strict";
import { chmodSync, readdirSync, readFileSync, readlinkSync, statSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { tempDir } from "../helpers/daemon.js";
import { podmanForSuite } from "../helpers/podman.js";
import { sandboxPids } from "../helpers/proc.js";
import { RestartHarness } from "../helpers/restart-harness.js";
import { testUser } from "../helpers/run-id.js";

const RESTARTS = 10;

/** `socket:[inode]` for each descriptor a process holds. */
function socketsOf(pid: number | "self", fds?: readonly number[]): Set<string> {
  const links = (fds ?? readdirSync(`/proc/${pid}/fd`).map(Number)).map((fd) => {
    try {
      return readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      return "";
    }
  });
  return new Set(links.filter((link) => link.startsWith("socket:")));
}

function restartSuite(name: string, env: () => Record<string, string>, skip: string | false = false) {
  describe(`restarting the ${name}-runtime daemon under load (socket activation)`, { skip }, () => {
    const state = tempDir();
    after(() => state.remove());

    it(`fails no HTTP request and reconnects every WebSocket after 1012, over ${RESTARTS} restarts`, async () => {
      const harness = await RestartHarness.start(state.path, testUser(`${name}-restart`), env());
      try {
        const operatorSocket = join(state.path, "operator.sock");
        // Unlike the daemon's own 0600: shows that it leaves a socket it did not create alone.
        chmodSync(operatorSocket, 0o640);
        const socketFile = statSync(operatorSocket);
        const sandboxesBefore = (await harness.daemon.operator.get(`/sandboxes?user=${harness.user}`)).body.sandboxes;

        const load = await harness.load(4, 2);
        const restarts = [];
        for (let i = 0; i < RESTARTS; i++) {
          await sleep(300);
          restarts.push(await harness.restart());
        }
        await sleep(300);
        const { samples, sockets } = await load.stop();

        assert.deepEqual(
          restarts.map((r) => r.exitCode),
          Array(RESTARTS).fill(0),
          "every SIGTERM ends in exit 0",
        );
        const failed = samples.filter((s) => s.status !== 200).map((s) => `${s.status} ${s.error ?? ""}`);
        assert.deepEqual(failed, [], `not one of ${samples.length} requests failed`);
        assert.ok(samples.length > RESTARTS * 20, `${samples.length} requests made`);
        for (const socket of sockets) {
          assert.deepEqual(socket.closeCodes, [...Array(RESTARTS).fill(1012), 1000], "closed with 1012 by every restart, then by us");
          assert.equal(socket.opens, RESTARTS + 1, "reconnected after each restart");
          assert.equal(socket.echoes, socket.opens, "each connection echoed");
          assert.deepEqual(socket.errors, []);
        }

        const sandboxesAfter = (await harness.daemon.operator.get(`/sandboxes?user=${harness.user}`)).body.sandboxes;
        assert.deepEqual(sandboxesAfter, sandboxesBefore, "the same sandboxes, left running and adopted by every new daemon");
        const stillThere = statSync(operatorSocket);
        assert.equal(stillThere.ino, socketFile.ino, "the operator socket file is the one systemd made");
        assert.equal(stillThere.mode & 0o777, 0o640, "and keeps its mode");
      } finally {
        await harness.close();
      }
    });
  });
}

restartSuite("process", () => ({}));

describe("socket activation and sandboxes", () => {
  const state = tempDir();
  after(() => state.remove());

  it("never lets a sandbox inherit the listening sockets", async () => {
    const user = testUser("inherit");
    const harness = await RestartHarness.start(state.path, user);
    try {
      const pids = sandboxPids([user]);
      assert.ok(pids.length > 0, "the live sandbox runs");
      const listeners = socketsOf("self", harness.sockets!.fds);
      assert.equal(listeners.size, 2);
      for (const pid of pids) {
        const held = [...socketsOf(pid)].filter((socket) => listeners.has(socket));
        assert.deepEqual(held, [], `sandbox ${pid} holds no listener of the hypervisor`);
        assert.doesNotMatch(readFileSync(`/proc/${pid}/environ`, "latin1"), /LISTEN_(PID|FDS|FDNAMES)=/);
      }
    } finally {
      await harness.close();
    }
  });
});

const { skip, service } = await podmanForSuite();
restartSuite("podman", () => ({ HYPERVISOR_RUNTIME: "podman", HYPERVISOR_PODMAN_SOCKET: service.socketPath }), skip);

import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { daemonEnv, spawnDaemon, tempDir } from "../helpers/daemon.js";
import { managedContainers, podmanForSuite } from "../helpers/podman.js";
import { sandboxPids } from "../helpers/proc.js";
import { runId, testUser } from "../helpers/run-id.js";
import { baseUrl, runTask, taskInputs } from "../helpers/sandbox-client.js";

interface SandboxRow {
  user: string;
  role: string;
  state: string;
  endpoint: { host: string; port: number } | null;
}

const wsUrl = (s: SandboxRow) => `${baseUrl(s.endpoint!).replace("http", "ws")}/ws`;

/**
 * SIGKILL the daemon while sandboxes run, start it again on the same state: it adopts them,
 * creates no duplicates and loses no data.
 */
function crashSuite(name: string, env: () => Record<string, string>, countRunning: (users: string[]) => Promise<number>, skip: string | false = false) {
  describe(`daemon crash with the ${name} runtime`, { skip }, () => {
    const state = tempDir();
    const users = [testUser(`${name}-kill-1`), testUser(`${name}-kill-2`)];
    after(() => state.remove());

    it("adopts running sandboxes after SIGKILL without duplicates or data loss", async () => {
      const first = await spawnDaemon(daemonEnv(state.path, { ...env(), HYPERVISOR_LOG_LEVEL: "info" }));
      const before = new Map<string, string>();
      try {
        for (const user of users) {
          assert.equal((await first.operator.post("/users", { name: user })).status, 201);
          for (const role of ["live", "dev"]) assert.equal((await first.operator.post(`/sandboxes/${user}/${role}/start`)).status, 200);
        }
        const rows = (await first.operator.get<{ sandboxes: SandboxRow[] }>("/sandboxes")).body.sandboxes.filter((s) => users.includes(s.user));
        for (const s of rows) await runTask(wsUrl(s), `${s.user}-${s.role}-kept`);
        for (const s of rows) before.set(`${s.user}/${s.role}`, `${s.endpoint!.host}:${s.endpoint!.port}`);
        assert.equal(await countRunning(users), 4);
      } finally {
        assert.equal(await first.kill("SIGKILL"), null);
      }

      assert.equal(await countRunning(users), 4, "sandboxes outlive a killed daemon");
      const second = await spawnDaemon(daemonEnv(state.path, { ...env(), HYPERVISOR_LOG_LEVEL: "info" }));
      try {
        const status = await second.operator.get("/status");
        assert.equal(status.body.users, 2);
        for (const user of users) {
          for (const role of ["live", "dev"]) {
            const res = await second.operator.post<{ sandbox: SandboxRow }>(`/sandboxes/${user}/${role}/start`);
            assert.equal(res.status, 200);
            assert.equal(
              `${res.body.sandbox.endpoint!.host}:${res.body.sandbox.endpoint!.port}`,
              before.get(`${user}/${role}`),
              "the same sandbox, not a new one",
            );
            assert.deepEqual(await taskInputs(res.body.sandbox.endpoint!), [`${user}-${role}-kept`]);
          }
        }
        assert.equal(await countRunning(users), 4, "no duplicates");
        assert.match(second.output(), /"adopted":4/);
      } finally {
        assert.equal(await second.kill("SIGTERM"), 0, "graceful shutdown exits 0");
      }
      assert.equal(await countRunning(users), 4, "a graceful shutdown leaves sandboxes running");

      // Data also survives a stop/start of the sandboxes by a third daemon.
      const third = await spawnDaemon(daemonEnv(state.path, env()));
      try {
        const user = users[0]!;
        assert.equal((await third.operator.post(`/sandboxes/${user}/live/stop`)).status, 200);
        const res = await third.operator.post<{ sandbox: SandboxRow }>(`/sandboxes/${user}/live/start`);
        assert.deepEqual(await taskInputs(res.body.sandbox.endpoint!), [`${user}-live-kept`]);
        for (const u of users) for (const role of ["live", "dev"]) await third.operator.post(`/sandboxes/${u}/${role}/stop`);
        assert.equal(await countRunning(users), 0);
      } finally {
        await third.kill("SIGTERM");
      }
    });
  });
}

crashSuite(
  "process",
  () => ({}),
  async (users) => sandboxPids(users).length,
);

const { skip, service } = await podmanForSuite();
crashSuite(
  "podman",
  () => ({ HYPERVISOR_RUNTIME: "podman", HYPERVISOR_PODMAN_SOCKET: service.socketPath }),
  async (users) => (await managedContainers(runId)).filter((c) => users.includes(c.user) && c.running).length,
  skip,
);

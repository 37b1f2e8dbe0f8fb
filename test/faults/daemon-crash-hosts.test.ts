import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
import { daemonEnv, spawnDaemon, tempDir, type SpawnedDaemon } from "../helpers/daemon.js";
import { managedContainers, podmanForSuite } from "../helpers/podman.js";
import { freePort } from "../helpers/ports.js";
import { runId, testUser } from "../helpers/run-id.js";
import { baseUrl, getJson, runTask, taskInputs } from "../helpers/sandbox-client.js";
import { SimHost } from "../helpers/sim-hosts.js";

const { skip, service } = await podmanForSuite();
const ORIGIN = "http://hv.test";

interface SandboxRow {
  user: string;
  role: string;
  endpoint: { host: string; port: number } | null;
}

/**
 * SIGKILL the daemon while users run on three simulated hosts (two namespaces over tcp, one
 * over ssh), then start it again on the same state: every host's sandboxes are adopted where
 * they run, none is created twice, none is left behind, and the users are served again.
 */
describe("daemon crash with users on three Podman hosts", { skip, timeout: 600_000 }, () => {
  const hosts = [new SimHost("n1"), new SimHost("n2"), new SimHost("s1")];
  const state = tempDir();
  const users = [1, 2, 3].map((i) => testUser(`hostkill-${i}`));
  const cookies = new Map<string, string>();
  const daemons: SpawnedDaemon[] = [];
  let env: Record<string, string>;
  let publicUrl: string;

  const spawn = async () => {
    const d = await spawnDaemon(env);
    daemons.push(d);
    return d;
  };
  /** What each host's own podman shows of this suite's users: the witness the daemon cannot bend. */
  const census = async () =>
    Object.fromEntries(
      await Promise.all(hosts.map(async (h) => [h.name, { containers: await h.containers(runId), volumes: (await h.volumes(runId)).sort() }] as const)),
    );

  before(async () => {
    if (skip) return;
    await hosts[0]!.startNetns(1);
    await hosts[1]!.startNetns(2);
    const ssh = await hosts[2]!.startSsh(3);
    const port = await freePort();
    publicUrl = `http://127.0.0.1:${port}`;
    env = daemonEnv(state.path, {
      HYPERVISOR_RUNTIME: "podman",
      HYPERVISOR_PODMAN_SOCKET: service.socketPath,
      HYPERVISOR_PUBLIC_ORIGIN: ORIGIN,
      HYPERVISOR_LISTEN: `127.0.0.1:${port}`,
      HYPERVISOR_SSH_KEY_FILE: ssh.keyFile,
      HYPERVISOR_SSH_KNOWN_HOSTS_FILE: ssh.knownHostsFile,
      HYPERVISOR_LOG_LEVEL: "info",
    });
  });
  after(async () => {
    for (const d of daemons) if (d.child.exitCode === null && d.child.signalCode === null) await d.kill("SIGKILL");
    await Promise.allSettled(hosts.map((h) => h.dispose()));
    state.remove();
  });

  it("adopts every sandbox on every host after SIGKILL: no duplicates, no orphans, users served again", async () => {
    const first = await spawn();
    const endpoints = new Map<string, string>();
    const placement = new Map<string, string>();
    try {
      // Room for one user (both slots) per host, and none on the hypervisor's own: one user each.
      for (const h of hosts) {
        const res = await first.operator.post("/hosts", { name: h.name, url: h.url, address: h.address, capacity: 2 });
        assert.equal(res.status, 201, JSON.stringify(res.body));
      }
      assert.equal((await first.operator.post("/hosts/local/cordon")).status, 200);
      for (const user of users) {
        const client = new PublicClient(publicUrl, ORIGIN);
        await client.register(user, new SoftwareAuthenticator(ORIGIN));
        assert.ok(client.cookie, `${user} registered`);
        cookies.set(user, `hv_session=${client.cookie}`);
        const live = await client.get("/whoami");
        assert.equal(live.status, 200, live.text);
        assert.equal((await first.operator.post(`/sandboxes/${user}/dev/start`)).status, 200);
      }
      const rows = (await first.operator.get<{ sandboxes: SandboxRow[] }>("/sandboxes")).body.sandboxes.filter((s) => users.includes(s.user));
      assert.equal(rows.length, 6);
      for (const s of rows) {
        await runTask(`${baseUrl(s.endpoint!).replace("http", "ws")}/ws`, `${s.user}-${s.role}-kept`);
        endpoints.set(`${s.user}/${s.role}`, baseUrl(s.endpoint!));
      }
      for (const [name, seen] of Object.entries(await census())) {
        assert.equal(seen.containers.length, 2, `${name}: ${JSON.stringify(seen.containers)}`);
        assert.ok(
          seen.containers.every((c) => c.running && c.user === seen.containers[0]!.user),
          `${name} runs both slots of one user`,
        );
        placement.set(seen.containers[0]!.user, name);
      }
      assert.equal(placement.size, 3, "one user on each host");
    } finally {
      assert.equal(await first.kill("SIGKILL"), null);
    }

    const orphaned = await census();
    for (const [name, seen] of Object.entries(orphaned)) {
      assert.equal(seen.containers.filter((c) => c.running).length, 2, `${name}: sandboxes outlive a killed daemon`);
    }

    const second = await spawn();
    assert.match(second.output(), /"adopted":6/, "all six sandboxes, on three hosts, adopted at start");
    for (const user of users) {
      for (const role of ["live", "dev"]) {
        const res = await second.operator.post<{ sandbox: SandboxRow }>(`/sandboxes/${user}/${role}/start`);
        assert.equal(res.status, 200, JSON.stringify(res.body));
        assert.equal(baseUrl(res.body.sandbox.endpoint!), endpoints.get(`${user}/${role}`), `${user}/${role}: the same sandbox, not a new one`);
        assert.deepEqual(await taskInputs(res.body.sandbox.endpoint!), [`${user}-${role}-kept`]);
      }
      const who = await getJson<{ user: string }>(`${publicUrl}/whoami`, { headers: { cookie: cookies.get(user)! } });
      assert.equal(who.status, 200, JSON.stringify(who.body));
      assert.equal(who.body.user, user);
    }

    const restarted = await census();
    assert.deepEqual(restarted, orphaned, "each host holds exactly what it held before the crash: nothing created twice, nothing removed");
    for (const [name, seen] of Object.entries(restarted)) {
      const user = [...placement].find(([, host]) => host === name)![0];
      assert.deepEqual(
        seen.containers.map((c) => `${c.user}/${c.slot}`).sort(),
        [`${user}/a`, `${user}/b`],
        `${name} holds its own user's two sandboxes and no other's`,
      );
      assert.ok(
        seen.volumes.every((v) => v.startsWith(`hv-${user}-`)),
        `${name} holds no other user's data: ${seen.volumes.join(", ")}`,
      );
    }
    assert.deepEqual(await managedContainers(runId), [], "nothing was started on the cordoned local host");
    const listed = (await second.operator.get<{ hosts: { name: string; users: number; sandboxes: number | null }[] }>("/hosts")).body.hosts;
    assert.deepEqual(
      hosts.map((h) => listed.find((l) => l.name === h.name)).map((l) => [l?.name, l?.users, l?.sandboxes]),
      hosts.map((h) => [h.name, 1, 2]),
    );
    assert.equal(await second.kill("SIGTERM"), 0, "graceful shutdown exits 0");
  });
});

// DESIGN §8b on the process runtime: a hostile sandbox goes for the host's resources (forty setsid
// CPU spinners, a log flooder, a /tmp filler, a memory hog, a fork bomb) and each attack is held
// by its limit, as the sandbox's own cgroup counters show; the sandbox is the only victim, the
// hypervisor keeps answering, and another user's proxied requests keep their latency, compared
// with the same requests measured before the attack in this test. A stop then leaves nothing of
// the sandbox running, its setsid children included.
import assert from "node:assert/strict";
import { copyFileSync, existsSync, readdirSync, readFileSync, realpathSync, statSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { Endpoint } from "../../proxy/target.js";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
import { countersOf, groupsOf, membersOf, removeSandboxGroups } from "../helpers/cgroups.js";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { ensureSandboxImage, managedContainers, podman, podmanSkipReason, PodmanService, removeRunArtifacts, SANDBOX_IMAGE } from "../helpers/podman.js";
import { repoRoot } from "../helpers/paths.js";
import { sandboxPids } from "../helpers/proc.js";
import { runId, testUser } from "../helpers/run-id.js";
import { baseUrl } from "../helpers/sandbox-client.js";

const hogScript = join(repoRoot, "dist/test/fixtures/resource-hog.js");
const ORIGIN = "http://hv.test";
const MEMORY = 128 * 1024 * 1024;
const PIDS = 128;
const LOG_MAX = 1024 * 1024;

/** Median and 95th percentile of `n` sequential proxied requests, in ms. */
async function latency(client: PublicClient, n: number): Promise<{ p50: number; p95: number }> {
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const began = performance.now();
    const res = await client.get("/whoami");
    ms.push(performance.now() - began);
    assert.equal(res.status, 200, res.text);
  }
  ms.sort((a, b) => a - b);
  return { p50: ms[Math.floor(n / 2)]!, p95: ms[Math.floor(n * 0.95)]! };
}

function uidOf(pid: number): number {
  return Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "latin1"))![1]);
}

function pidsOfUid(uid: number): number[] {
  return readdirSync("/proc")
    .filter((e) => /^\d+$/.test(e))
    .filter((e) => {
      try {
        const status = readFileSync(`/proc/${e}/status`, "latin1");
        return !/^State:\s+Z/m.test(status) && uidOf(Number(e)) === uid;
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** What differs between runtimes: how the hostile generation is made, where its main process and its log are. */
interface LimitsRuntime {
  env(): Record<string, string>;
  /** The body of POST /generations for the hostile generation. */
  generation(): Promise<Record<string, unknown>>;
  /** The host pid of the user's running sandbox's main process. */
  mainPid(user: string): Promise<number>;
  /** The sizes of the files its log is kept in, on the host. */
  logSizes(t: TestDaemon, user: string): Promise<number[]>;
  /** Whether its log is rotated into an older half (process) or cut in place (Podman's k8s-file). */
  rotates: boolean;
  dispose(): Promise<void>;
}

function limitsSuite(name: string, runtime: LimitsRuntime, skip: string | false): void {
  describe(`a hostile ${name} sandbox against its limits (DESIGN §8b)`, { skip }, () => {
    let t: TestDaemon;
    const alice = testUser(`limits-${name}-alice`);
    const mallory = testUser(`limits-${name}-mallory`);
    const client = () => new PublicClient(t.publicUrl, ORIGIN);
    let aliceClient: PublicClient;
    let hostile: Endpoint;
    let groups: ReturnType<typeof groupsOf>;
    let uid: number;
    let baseline: { p50: number; p95: number };
    const attack = async <T>(path: string): Promise<T> => {
      const res = await fetch(`${baseUrl(hostile)}${path}`, { signal: AbortSignal.timeout(30_000) });
      assert.equal(res.status, 200, await res.clone().text());
      return (await res.json()) as T;
    };

    before(async () => {
      t = await bootDaemon({
        env: {
          HYPERVISOR_PUBLIC_ORIGIN: ORIGIN,
          HYPERVISOR_SANDBOX_MEMORY: String(MEMORY),
          HYPERVISOR_SANDBOX_CPUS: "0.5",
          HYPERVISOR_SANDBOX_PIDS: String(PIDS),
          HYPERVISOR_SANDBOX_LOG_MAX: String(LOG_MAX),
          ...runtime.env(),
        },
      });
      aliceClient = client();
      await aliceClient.register(alice, new SoftwareAuthenticator(ORIGIN));
      assert.equal((await aliceClient.get("/whoami")).status, 200, "alice's sandbox starts on her first request");
      assert.equal((await t.operator.post("/users", { name: mallory })).status, 201);
      const added = await t.operator.post<{ generation: { id: number } }>("/generations", await runtime.generation());
      assert.equal(added.status, 201, JSON.stringify(added.body));
      assert.equal((await t.operator.post("/deploy", { generation: added.body.generation.id, users: [mallory] })).status, 200);
      const started = await t.operator.post<{ sandbox: { endpoint: Endpoint } }>(`/sandboxes/${mallory}/dev/start`);
      assert.equal(started.status, 200, JSON.stringify(started.body));
      hostile = started.body.sandbox.endpoint;
      const pid = await runtime.mainPid(mallory);
      groups = groupsOf(pid);
      uid = uidOf(pid);
      // Warmed up, then measured: the same requests the attack is compared with.
      await latency(aliceClient, 20);
      baseline = await latency(aliceClient, 60);
    });
    after(async () => {
      for (const user of [alice, mallory]) await t?.operator.send("DELETE", `/users/${user}?purge=true&confirm=true`).catch(() => undefined);
      await t?.close();
      await runtime.dispose();
    });

    it("forty setsid spinners are throttled to its CPU quota, and another user's requests keep their latency", async () => {
      assert.deepEqual(await attack("/spin?n=40"), { started: 40 });
      await sleep(1000);
      const before = { ...countersOf(groups), at: performance.now() };
      const during = await latency(aliceClient, 60);
      await sleep(Math.max(0, 2000 - (performance.now() - before.at)));
      const after = { ...countersOf(groups), at: performance.now() };
      // Throttling shows only when the machine leaves it more than its quota, so the bound itself is
      // checked: the CPU time all its processes used in the window, against half a CPU.
      const used = (after.cpuUs - before.cpuUs) / 1000;
      const window = after.at - before.at;
      assert.ok(
        used <= window * 0.5 * 1.1 + 20,
        `${used.toFixed(0)} ms of CPU in ${window.toFixed(0)} ms, quota 0.5 CPU (throttled ${(after.throttledUs - before.throttledUs).toFixed(0)} µs)`,
      );
      // Generous, relative to the same requests before the attack: a loaded 2-core machine varies.
      assert.ok(during.p50 <= baseline.p50 * 4 + 20, `p50 ${during.p50.toFixed(1)} ms under attack, ${baseline.p50.toFixed(1)} ms before`);
      assert.ok(during.p95 <= baseline.p95 * 4 + 50, `p95 ${during.p95.toFixed(1)} ms under attack, ${baseline.p95.toFixed(1)} ms before`);
    });

    it("a log flooder fills no more than its log's bound", async () => {
      await attack("/flood?seconds=3");
      await sleep(4000);
      const sizes = await runtime.logSizes(t, mallory);
      if (runtime.rotates) assert.ok(sizes[1]! > 0, "the flood reached the log and rotated it");
      assert.ok(sizes[0]! > 0, "the flood reached the log");
      const total = sizes.reduce((a, b) => a + b, 0);
      assert.ok(total <= LOG_MAX, `log ${sizes.join(" + ")} bytes, bound ${LOG_MAX}`);
      const tail = await t.operator.get<string>(`/sandboxes/${mallory}/dev/logs?tail=5`);
      assert.equal(tail.status, 200);
    });

    it("a /tmp filler stops at its tmpfs's size, within its memory", async () => {
      const filled = await attack<{ bytes: number; error: string }>("/tmpfill");
      assert.equal(filled.error, "ENOSPC");
      assert.ok(filled.bytes <= MEMORY / 2, `${filled.bytes} bytes in /tmp`);
    });

    it("a memory hog is stopped at its memory limit, inside the sandbox", async () => {
      await attack("/memhog");
      const deadline = Date.now() + 15_000;
      while (countersOf(groups).memoryHits === 0 && Date.now() < deadline) await sleep(100);
      const counters = countersOf(groups);
      assert.ok(counters.memoryHits > 0, "the hog reached the limit");
      assert.ok(counters.memoryPeak <= MEMORY, `peak ${counters.memoryPeak} bytes, limit ${MEMORY}`);
      assert.equal((await t.operator.get("/status")).status, 200, "the hypervisor answers");
    });

    it("a fork bomb is held by its pids limit", async () => {
      await attack("/forkbomb");
      const deadline = Date.now() + 15_000;
      while (countersOf(groups).pidsRefused === 0 && Date.now() < deadline) await sleep(100);
      const counters = countersOf(groups);
      assert.ok(counters.pidsRefused > 0, "forks were refused");
      assert.ok(counters.pidsCurrent <= PIDS, `${counters.pidsCurrent} tasks, limit ${PIDS}`);
      assert.equal((await t.operator.get("/status")).status, 200, "the hypervisor answers");
      assert.equal((await aliceClient.get("/whoami")).status, 200, "another user is served");
    });

    it("a stop kills every process of the sandbox, setsid children included, before its uid could pass on", async () => {
      assert.ok(pidsOfUid(uid).length > 40, "the spinners and the bomb run as its uid");
      assert.equal((await t.operator.post(`/sandboxes/${mallory}/dev/stop`)).status, 200);
      assert.deepEqual(pidsOfUid(uid), [], "nothing runs as its uid");
      assert.deepEqual(membersOf(groups.pids), [], "nothing is left in its cgroup");
      assert.equal((await aliceClient.get("/whoami")).status, 200, "another user is served");
    });
  });
}

limitsSuite(
  "process",
  {
    env: () => ({}),
    generation: async () => ({ command: [process.execPath, hogScript], version: "resource-hog" }),
    mainPid: async (user) => {
      const [pid] = sandboxPids([user]);
      assert.ok(pid, `${user}'s sandbox runs`);
      return pid;
    },
    logSizes: async (t, user) => {
      const root = join(t.stateDir, "sandboxes");
      const dir = join(
        root,
        readdirSync(root).find((e) => e.startsWith(`${user}-`))!,
      );
      return ["sandbox.log", "sandbox.log.1"].map((f) => (existsSync(join(dir, f)) ? statSync(join(dir, f)).size : 0));
    },
    rotates: true,
    dispose: () => removeSandboxGroups(`${runId}-limits-process-`),
  },
  process.getuid?.() === 0 ? false : "needs root: sandbox uids and cgroups",
);

const podmanSkip = podmanSkipReason();
const service = new PodmanService();
const hogImage = `localhost/hv-resource-hog:${runId}`;
if (!podmanSkip) {
  await ensureSandboxImage();
  await service.start();
}
/** The user's running container. */
const containerOf = async (user: string) => (await managedContainers(user)).find((c) => c.running)!.name;
limitsSuite(
  "podman",
  {
    env: () => ({ HYPERVISOR_RUNTIME: "podman", HYPERVISOR_PODMAN_SOCKET: service.socketPath }),
    // The reference image (node alone) with the attack script, and the host's sh, timeout and yes it runs.
    generation: async () => {
      const context = tempDir("hv-hog-image-");
      try {
        copyFileSync(hogScript, join(context.path, "resource-hog.js"));
        for (const tool of ["/bin/sh", "/usr/bin/timeout", "/usr/bin/yes"]) copyFileSync(realpathSync(tool), join(context.path, basename(tool)));
        writeFileSync(
          join(context.path, "Containerfile"),
          [
            `FROM ${SANDBOX_IMAGE}`,
            "COPY resource-hog.js /app/hog/resource-hog.js",
            "COPY sh /bin/sh",
            "COPY timeout yes /usr/bin/",
            'CMD ["/usr/bin/node", "/app/hog/resource-hog.js"]',
            "",
          ].join("\n"),
        );
        await podman("build", "-q", "--pull=never", "-t", hogImage, context.path);
      } finally {
        context.remove();
      }
      return { image: hogImage };
    },
    mainPid: async (user) => Number((await podman("inspect", "--format", "{{.State.Pid}}", await containerOf(user))).trim()),
    logSizes: async (_t, user) => {
      const path = (await podman("inspect", "--format", "{{.HostConfig.LogConfig.Path}}", await containerOf(user))).trim();
      return [statSync(path).size];
    },
    rotates: false,
    dispose: async () => {
      await removeRunArtifacts(`${runId}-limits-podman-`);
      await podman("rmi", "-f", hogImage).catch(() => undefined);
      await service.dispose();
    },
  },
  podmanSkip,
);

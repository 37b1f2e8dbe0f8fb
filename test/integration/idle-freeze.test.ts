import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import WebSocket from "ws";
import { tempDir } from "../helpers/daemon.js";
import { explain, runCli } from "../helpers/hypervisorctl.js";
import { podman, podmanForSuite } from "../helpers/podman.js";
import { sandboxPids } from "../helpers/proc.js";
import { ORIGIN, RestartHarness } from "../helpers/restart-harness.js";
import { testUser } from "../helpers/run-id.js";

/** Frozen after one idle second; the sweep looks every 250 ms. */
const IDLE = { HYPERVISOR_IDLE_FREEZE_MS: "1000", HYPERVISOR_IDLE_STOP_MS: "0" };

type Runtime = "process" | "podman";

/** The live sandbox's processes, found from the kernel's side: /proc for process sandboxes, Podman's own record of the container's pid. */
async function pidsOf(runtime: Runtime, user: string): Promise<number[]> {
  if (runtime === "process") return sandboxPids([user]);
  const pid = Number((await podman("inspect", "--format", "{{.State.Pid}}", `hv-${user}-a`)).trim());
  return pid > 0 ? [pid] : [];
}

/** utime + stime of the processes, in clock ticks (/proc/<pid>/stat fields 14 and 15). */
function cpuTicks(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    ticks += Number(fields[11]) + Number(fields[12]);
  }
  return ticks;
}

async function liveState(harness: RestartHarness): Promise<{ state: string; startedAt: string | null }> {
  const res = await harness.daemon.operator.get(`/sandboxes?user=${harness.user}`);
  const live = (res.body.sandboxes as Array<{ role: string; state: string; startedAt: string | null }>).find((s) => s.role === "live")!;
  return { state: live.state, startedAt: live.startedAt };
}

async function waitForState(harness: RestartHarness, state: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < deadline) {
    last = (await liveState(harness)).state;
    if (last === state) return;
    await sleep(100);
  }
  assert.fail(`the live sandbox is ${last}, not ${state}, after ${timeoutMs} ms`);
}

function get(harness: RestartHarness, path: string): Promise<Response> {
  return fetch(`${harness.publicUrl}${path}`, { headers: { cookie: harness.cookie } });
}

/** Whether the sandbox's in-memory request log (lost by any restart) holds a request for `path`. */
async function remembers(harness: RestartHarness, path: string): Promise<boolean> {
  const res = await get(harness, "/__sandbox/requests");
  assert.equal(res.status, 200);
  const { requests } = (await res.json()) as { requests: Array<{ url: string }> };
  return requests.some((r) => r.url === path);
}

function freezeSuite(runtime: Runtime, env: () => Record<string, string>, skip: string | false = false) {
  describe(`idle freeze on the ${runtime} runtime`, { skip }, () => {
    const state = tempDir();
    after(() => state.remove());

    it("freezes an idle sandbox (no CPU), thaws it on the next request with its memory intact, is held running by a WebSocket, and stays frozen across a SIGKILL of the daemon", async () => {
      const harness = await RestartHarness.start(state.path, testUser(`${runtime}-freeze`), { ...IDLE, ...env() });
      try {
        const mark = `/whoami?mark=${Date.now()}`;
        assert.equal((await get(harness, mark)).status, 200);
        const { startedAt } = await liveState(harness);
        const pids = await pidsOf(runtime, harness.user);
        assert.ok(pids.length > 0, "the sandbox's processes are found");

        await waitForState(harness, "frozen");
        // The same state everywhere: hypervisorctl and the metrics.
        const listed = await runCli(["--socket", join(state.path, "operator.sock"), "sandboxes", "--user", harness.user]);
        assert.match(listed.stdout, new RegExp(`${harness.user}\\s+live\\s+a\\s+\\d+\\s+frozen\\s+-`), explain(listed));
        const metrics = await harness.daemon.operator.get("/metrics");
        assert.match(String(metrics.body), /hypervisor_sandboxes\{state="frozen"\} 1/);
        const before = cpuTicks(pids);
        await sleep(1500);
        assert.equal(cpuTicks(pids), before, "a frozen sandbox's CPU time does not grow");

        assert.equal(await remembers(harness, mark), true, "the request thawed it; what it held in memory is intact");
        const thawed = await liveState(harness);
        assert.equal(thawed.state, "running");
        assert.equal(thawed.startedAt, startedAt, "the same sandbox: no cold start");
        assert.deepEqual(await pidsOf(runtime, harness.user), pids);

        // An open WebSocket keeps it running however long it stays idle.
        const ws = new WebSocket(`${harness.publicUrl.replace("http", "ws")}/ws/echo`, { headers: { cookie: harness.cookie, origin: ORIGIN } });
        await new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject));
        await sleep(3000);
        assert.equal((await liveState(harness)).state, "running", "not frozen while a WebSocket is open");
        const echoed = new Promise((resolve) => ws.once("message", resolve));
        ws.send("still here");
        await echoed;
        ws.close();
        await waitForState(harness, "frozen");

        // So does an HTTP request in flight: a stream of 3 s, idle in between for the proxy.
        const streaming = await get(harness, "/sse?n=30&interval=100");
        assert.equal(streaming.status, 200);
        await sleep(2000);
        assert.equal((await liveState(harness)).state, "running", "not frozen while a request is in flight");
        const events = (await streaming.text()).split("\n").filter((l) => l.startsWith("data: "));
        assert.equal(events.length, 30);
        await waitForState(harness, "frozen");

        // A daemon killed outright: the next one adopts the sandbox as frozen, and a request thaws it.
        assert.equal(await harness.daemon.kill("SIGKILL"), null);
        await harness.startAgain();
        assert.equal((await liveState(harness)).state, "frozen", "adopted as frozen");
        assert.equal(await remembers(harness, mark), true, "thawed by the new daemon, its memory intact");
        const adopted = await liveState(harness);
        assert.equal(adopted.state, "running");
        assert.equal(adopted.startedAt, startedAt);
      } finally {
        await harness.close();
      }
    });

    if (runtime === "process") {
      it("below the memory reserve (set against this host's real MemAvailable) stops a frozen sandbox, then refuses a start with a 503", async () => {
        const own = tempDir();
        after(() => own.remove());
        const harness = await RestartHarness.start(own.path, testUser("pressure"), { ...IDLE, ...env() });
        try {
          await waitForState(harness, "frozen");
          const available = Number(/^MemAvailable:\s+(\d+) kB$/m.exec(readFileSync("/proc/meminfo", "utf8"))![1]) * 1024;
          // A reserve 1 GiB above what is available: short of memory whatever else runs meanwhile.
          const reserve = `${Math.ceil((available + 1024 ** 3) / 1024 ** 2)}m`;
          await harness.daemon.kill("SIGKILL");
          await harness.startAgain({ HYPERVISOR_MEMORY_RESERVE: reserve });
          await waitForState(harness, "stopped");
          assert.deepEqual(sandboxPids([harness.user]), [], "its processes are gone");
          const refused = await get(harness, "/whoami");
          assert.equal(refused.status, 503);
          const body = (await refused.json()) as { error: { code: string; message: string } };
          assert.equal(body.error.code, "capacity_exhausted");
          assert.match(body.error.message, /short of memory/);
          const audit = await harness.daemon.operator.get("/audit?limit=20");
          const actions = (audit.body.entries as Array<{ action: string; target: string }>).map((e) => `${e.action} ${e.target}`);
          assert.ok(actions.includes(`sandbox.stop.memory ${harness.user}/a`), actions.join(", "));
          assert.ok(actions.includes(`sandbox.start.refused ${harness.user}/a`), actions.join(", "));
          await harness.daemon.kill("SIGKILL");
          await harness.startAgain({ HYPERVISOR_MEMORY_RESERVE: "0" });
        } finally {
          await harness.close();
        }
      });
    }
  });
}

freezeSuite("process", () => ({}));

const { skip, service } = await podmanForSuite();
freezeSuite("podman", () => ({ HYPERVISOR_RUNTIME: "podman", HYPERVISOR_PODMAN_SOCKET: service.socketPath }), skip);

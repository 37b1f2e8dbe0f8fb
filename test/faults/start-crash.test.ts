// Issue: after a SIGKILL of the daemon during a swap, one slot ran two processes of the same
// generation on the same data, for minutes. A daemon killed at each step of a process sandbox's
// start (before the spawn, after it, after the record) and started again leaves exactly one
// process on the slot: what the kernel shows in /proc, not what the records say.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { describe, it } from "node:test";
import { removeSandboxGroups } from "../helpers/cgroups.js";
import { setTimeout as sleep } from "node:timers/promises";
import { daemonEnv, spawnDaemon, tempDir, type SpawnedDaemon } from "../helpers/daemon.js";
import { sandboxPids } from "../helpers/proc.js";
import { testUser } from "../helpers/run-id.js";

const STEPS = ["before-spawn", "after-spawn", "after-record"] as const;

describe("a daemon killed during a process sandbox's start", { skip: process.getuid?.() === 0 ? false : "needs root: sandbox uids and cgroups" }, () => {
  for (const step of STEPS) {
    it(`${step}: the next daemon kills or adopts what runs, and the slot runs once`, async () => {
      const state = tempDir();
      const user = testUser(`startkill-${step.replace("-", "")}`);
      try {
        const first = await spawnDaemon(daemonEnv(state.path, { HYPERVISOR_TEST_CRASH_AT: step }));
        const died = new Promise<NodeJS.Signals | null>((resolve) => first.child.once("exit", (_code, signal) => resolve(signal)));
        assert.equal((await first.operator.post("/users", { name: user })).status, 201);
        await first.operator.post(`/sandboxes/${user}/dev/start`).catch(() => undefined);
        assert.equal(await died, "SIGKILL", `the daemon died at ${step}: ${first.output()}`);
        const left = sandboxPids([user]);
        assert.equal(left.length, step === "before-spawn" ? 0 : 1, `what the crash left running: ${left.join(", ")}`);

        const second = await spawnDaemon(daemonEnv(state.path));
        try {
          // Adoption: a process the record names is kept; one it does not name is killed.
          assert.deepEqual(sandboxPids([user]), step === "after-record" ? left : [], "after adoption");
          const started = await second.operator.post(`/sandboxes/${user}/dev/start`);
          assert.equal(started.status, 200, JSON.stringify(started.body));
          const running = sandboxPids([user]);
          assert.equal(running.length, 1, `processes on the slot: ${running.join(", ")}`);
          if (step === "after-record") assert.deepEqual(running, left, "the recorded sandbox is adopted, not started again");
          assert.equal((await second.operator.post(`/sandboxes/${user}/dev/stop`)).status, 200);
          assert.deepEqual(sandboxPids([user]), [], "a stop leaves nothing of the slot running");
          assert.equal((await second.operator.send("DELETE", `/users/${user}?purge=true&confirm=true`)).status, 200);
        } finally {
          await second.kill("SIGTERM");
        }
      } finally {
        // What a failure left: the slot's processes and groups (the daemon removes them when it passes).
        await removeSandboxGroups(user);
        for (const line of execFileSync("ip", ["netns", "list"], { encoding: "utf8" }).split("\n")) {
          const netns = line.split(" ")[0]!;
          if (netns.includes(`-${user}-`)) execFileSync("ip", ["netns", "delete", netns]);
        }
        state.remove();
      }
    });
  }

  it("keeps a sandbox's output across a SIGKILL of the daemon: what it wrote meanwhile arrives through the next one, none lost", async () => {
    const state = tempDir();
    const user = testUser("startkill-logs");
    // A tick every 20 ms: about 75 lines while no daemon drains its pipe, well within the pipe's buffer.
    const script =
      "let n=0;setInterval(()=>console.log('tick '+n++),20);require('http').createServer((q,s)=>s.end('ok')).listen(+process.env.PORT,process.env.HOST)";
    const ticks = async (daemon: SpawnedDaemon): Promise<number[]> => {
      const res = await daemon.operator.get<string>(`/sandboxes/${user}/dev/logs?tail=10000`);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      return String(res.body)
        .split("\n")
        .filter((l) => l.startsWith("tick "))
        .map((l) => Number(l.slice(5)));
    };
    try {
      const first = await spawnDaemon(daemonEnv(state.path));
      let before: number[] = [];
      let pids: number[] = [];
      try {
        assert.equal((await first.operator.post("/users", { name: user })).status, 201);
        const added = await first.operator.post<{ generation: { id: number } }>("/generations", {
          command: [process.execPath, "-e", script],
          version: "ticks",
        });
        assert.equal(added.status, 201, JSON.stringify(added.body));
        assert.equal((await first.operator.post("/deploy", { generation: added.body.generation.id, users: [user] })).status, 200);
        assert.equal((await first.operator.post(`/sandboxes/${user}/dev/start`)).status, 200);
        while (before.length < 10) before = await ticks(first);
        pids = sandboxPids([user]);
      } finally {
        await first.kill("SIGKILL");
      }
      await sleep(1500);
      const second = await spawnDaemon(daemonEnv(state.path));
      try {
        let after: number[] = [];
        const deadline = Date.now() + 10_000;
        while (Date.now() < deadline && (after.at(-1) ?? 0) < before.at(-1)! + 100) after = await ticks(second);
        assert.deepEqual(sandboxPids([user]), pids, "the sandbox outlived the daemon");
        assert.ok(after.at(-1)! >= before.at(-1)! + 100, `ticks went on: ${before.at(-1)} before, ${after.at(-1)} after`);
        const gaps = after.slice(1).filter((n, i) => n !== after[i]! + 1);
        assert.deepEqual(gaps, [], "no line lost while no daemon drained the pipe");
        assert.equal((await second.operator.send("DELETE", `/users/${user}?purge=true&confirm=true`)).status, 200);
      } finally {
        await second.kill("SIGTERM");
      }
    } finally {
      await removeSandboxGroups(user);
      state.remove();
    }
  });
});

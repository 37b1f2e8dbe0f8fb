// Issue: after a SIGKILL of the daemon during a swap, one slot ran two processes of the same
// generation on the same data, for minutes. A daemon killed at each step of a process sandbox's
// start (before the spawn, after it, after the record) and started again leaves exactly one
// process on the slot: what the kernel shows in /proc, not what the records say.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { describe, it } from "node:test";
import { removeSandboxGroups } from "../helpers/cgroups.js";
import { daemonEnv, spawnDaemon, tempDir } from "../helpers/daemon.js";
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
          assert.equal((await second.operator.send("DELETE", `/users/${user}?purge=true`)).status, 200);
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
});

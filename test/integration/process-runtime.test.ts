import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { referenceSandboxCommand } from "../../hypervisor/generations/default-generation.js";
import { waitHealthy } from "../../hypervisor/sandboxes/health-check.js";
import { ProcessRuntime } from "../../hypervisor/runtime/process-runtime.js";
import { tempDir } from "../helpers/daemon.js";
import { runId } from "../helpers/run-id.js";
import { runtimeContract } from "./runtime-contract.js";

function environOf(pid: string): Record<string, string> {
  const pairs = readFileSync(`/proc/${pid}/environ`, "latin1").split("\0").filter(Boolean);
  return Object.fromEntries(pairs.map((p) => [p.slice(0, p.indexOf("=")), p.slice(p.indexOf("=") + 1)]));
}

runtimeContract("process", async () => {
  const dir = tempDir();
  const { command, version } = referenceSandboxCommand();
  return {
    runtime: new ProcessRuntime(join(dir.path, "sandboxes")),
    generation: { id: 1, version, command },
    envOf: async (info) => environOf(info.id),
    // HOST keeps a process sandbox on loopback (it has no network namespace of its own).
    runtimeEnv: ["HOST"],
    dispose: async () => dir.remove(),
  };
});

describe("process runtime", () => {
  const dir = tempDir();
  const runtime = new ProcessRuntime(join(dir.path, "sandboxes"));
  const user = `${runId}-stubborn`;
  after(async () => {
    await runtime.remove(user, "a", { removeData: true });
    dir.remove();
  });

  it("kills a sandbox that ignores SIGTERM once the stop timeout passes, leaving no zombie", async () => {
    // A workload that ignores SIGTERM, like a Node PID 1 without a handler.
    const script = "process.on('SIGTERM',()=>{});require('http').createServer((q,s)=>s.end('ok')).listen(+process.env.PORT,process.env.HOST)";
    await runtime.create({
      user,
      slot: "a",
      generation: { id: 7, version: "stubborn", command: [process.execPath, "-e", script] },
      env: {},
      limits: { memoryBytes: 64 * 1024 * 1024, nanoCpus: 1e9, pids: 64 },
    });
    const info = await runtime.start(user, "a");
    // Only once it serves has it installed its SIGTERM handler.
    assert.equal(await waitHealthy(info.endpoint!, Date.now() + 10_000), "healthy");
    const began = Date.now();
    await runtime.stop(user, "a", 600);
    const took = Date.now() - began;
    assert.ok(took >= 550, `stop waited out the timeout before SIGKILL (took ${took} ms)`);
    assert.equal(existsSync(`/proc/${info.id}`), false, "the process is gone and was reaped");
    assert.equal((await runtime.inspect(user, "a"))?.running, false);
  });
});

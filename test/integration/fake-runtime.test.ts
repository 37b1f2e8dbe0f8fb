import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { SandboxSpec } from "../../hypervisor/runtime/container-runtime.js";
import { FakeRuntime } from "../../hypervisor/runtime/fake-runtime.js";
import { rejectsWith, runtimeContract } from "./runtime-contract.js";
import { logText } from "../../hypervisor/runtime/log-lines.js";

const generation = { id: 1, version: "fake", command: ["fake-sandbox"] };

runtimeContract("fake", async () => {
  const runtime = new FakeRuntime();
  return {
    runtime,
    freezing: runtime,
    generation,
    envOf: async (info) => runtime.envOf(info.user, info.slot),
    runtimeEnv: [],
    host: "fake",
    probe: runtime.health,
    tasks: {
      run: async (info, input) => {
        runtime.data(info.user, info.slot).set(`tasks/${input}`, input);
      },
      inputs: async (info) => [...runtime.data(info.user, info.slot).values()],
    },
    dispose: async () => undefined,
  };
});

function spec(user: string): SandboxSpec {
  return { user, slot: "a", generation, env: {}, limits: { memoryBytes: 64 * 1024 * 1024, nanoCpus: 1e9, pids: 64 } };
}

describe("fake runtime controls", () => {
  it("holds the next start until the test releases it", async () => {
    const fake = new FakeRuntime();
    await fake.create(spec("slow"));
    const hold = fake.holdStart("slow", "a");
    let settled = false;
    const starting = fake.start("slow", "a").finally(() => (settled = true));
    await hold.reached;
    assert.equal((await fake.inspect("slow", "a"))?.running, false);
    assert.equal(settled, false);
    hold.release();
    assert.equal((await starting).running, true);
    // Only that one start was held.
    assert.equal((await fake.restart("slow", "a", 1000)).running, true);
  });

  it("answers not_found for a held start whose sandbox was removed meanwhile", async () => {
    const fake = new FakeRuntime();
    await fake.create(spec("gone"));
    const hold = fake.holdStart("gone", "a");
    const starting = fake.start("gone", "a");
    await hold.reached;
    await fake.remove("gone", "a", { removeData: true });
    hold.release();
    await rejectsWith(starting, "not_found");
  });

  it("crashes a running sandbox: it stops answering and logs its exit, and can start again", async () => {
    const fake = new FakeRuntime();
    await fake.create(spec("crashy"));
    const first = await fake.start("crashy", "a");
    fake.crash("crashy", "a", 137);
    const crashed = (await fake.inspect("crashy", "a"))!;
    assert.equal(crashed.running, false);
    assert.equal(crashed.endpoint, undefined);
    assert.equal(await fake.health.probe(first.endpoint!), false);
    assert.match(await logText(fake.logs("crashy", "a", { tail: 10, follow: false })), /exited with code 137/);
    assert.throws(() => fake.crash("crashy", "a"), /not running/);
    const again = await fake.start("crashy", "a");
    assert.equal(again.endpoint?.host, "fake");
    assert.notEqual(again.endpoint?.port, first.endpoint?.port, "each start gets its own port");
  });

  it("answers health as set, even when set before the sandbox exists", async () => {
    const fake = new FakeRuntime();
    fake.setHealthy("sick", "a", false);
    await fake.create(spec("sick"));
    const info = await fake.start("sick", "a");
    assert.equal(await fake.health.probe(info.endpoint!), false);
    fake.setHealthy("sick", "a", true);
    assert.equal(await fake.health.probe(info.endpoint!), true);
    assert.deepEqual((await logText(fake.logs("sick", "a", { tail: 10, follow: false }))).split("\n").filter(Boolean), ["GET /health 503", "GET /health 200"]);
    assert.equal(await fake.health.probe({ host: "127.0.0.1", port: info.endpoint!.port }), false, "only its own endpoints answer");
  });

  it("fails every call with runtime_unavailable while unavailable, and counts calls", async () => {
    const fake = new FakeRuntime();
    await fake.create(spec("down"));
    fake.setAvailable(false);
    await rejectsWith(fake.ping(), "runtime_unavailable");
    await rejectsWith(fake.inspect("down", "a"), "runtime_unavailable");
    await rejectsWith(fake.list(), "runtime_unavailable");
    fake.setAvailable(true);
    await fake.ping();
    await fake.restart("down", "a", 1000);
    const calls = fake.calls;
    assert.deepEqual([calls.create, calls.ping, calls.inspect, calls.list], [1, 2, 1, 1]);
    assert.deepEqual([calls.restart, calls.start, calls.stop], [1, 0, 0], "a restart counts once, as itself");
  });

  it("takes commands, not images, as the process runtime does", async () => {
    const fake = new FakeRuntime();
    await rejectsWith(fake.resolveImage("localhost/hypervisor-sandbox:latest"), "bad_request");
    await rejectsWith(fake.create({ ...spec("image"), generation: { id: 2, version: "2", imageId: "sha256:00" } }), "bad_request");
  });
});

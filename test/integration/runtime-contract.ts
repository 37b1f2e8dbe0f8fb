import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { HypervisorError } from "../../hypervisor/errors.js";
import type { ContainerRuntime, Freezing, GenerationSpec, HealthProbe, SandboxInfo, SandboxSpec } from "../../hypervisor/runtime/container-runtime.js";
import { logText } from "../../hypervisor/runtime/log-lines.js";
import { httpHealthProbe, waitHealthy } from "../../hypervisor/sandboxes/health-check.js";
import { limitsOf } from "../helpers/cgroups.js";
import { runId } from "../helpers/run-id.js";
import { baseUrl, runTask, taskInputs } from "../helpers/sandbox-client.js";

export interface RuntimeHarness {
  runtime: ContainerRuntime;
  /** Its freeze capability, as the runtime factory hands it out; absent where it has none. */
  freezing?: Freezing;
  generation: GenerationSpec;
  /** The environment the sandbox's main process really has, read from the host's /proc. */
  envOf(info: SandboxInfo): Promise<Record<string, string>>;
  /** The host pid of the sandbox's main process; absent for a runtime without real processes (the fake). */
  pidOf?(info: SandboxInfo): Promise<number>;
  /** Variables a runtime itself adds (podman: PATH, HOSTNAME, …); never the hypervisor's. */
  runtimeEnv: readonly string[];
  // What a runtime without real sandboxes (the fake) brings itself; each defaults to the real thing.
  /** The host endpoints point at; real runtimes publish on loopback, or the sandbox's own address. */
  host?: string | RegExp;
  /** How health is asked; default GET /health. */
  probe?: HealthProbe;
  /** How data is written and read back; default the reference sandbox's task API. */
  tasks?: SandboxTasks;
  dispose(): Promise<void>;
}

/** Writes and reads the sandbox's data the way a user does, to see what survives. */
export interface SandboxTasks {
  run(info: SandboxInfo, input: string): Promise<void>;
  inputs(info: SandboxInfo): Promise<string[]>;
}

const referenceTasks: SandboxTasks = {
  run: async (info, input) => {
    await runTask(`${baseUrl(info.endpoint!).replace("http", "ws")}/ws`, input);
  },
  inputs: (info) => taskInputs(info.endpoint!),
};

/** Put into the hypervisor's own environment; must never reach a sandbox. */
export const FAKE_SECRET = `hv-secret-${runId}`;
process.env.HYPERVISOR_FAKE_SECRET_FOR_TESTS = FAKE_SECRET;

const CONTRACT_ENV = ["PORT", "DATA_DIR", "HYPERVISOR_USER", "HYPERVISOR_SLOT", "HYPERVISOR_GENERATION"];

async function healthy(h: RuntimeHarness, info: SandboxInfo): Promise<void> {
  assert.ok(info.endpoint, "a running sandbox has an endpoint");
  const verdict = await waitHealthy(info.endpoint, Date.now() + 20_000, undefined, h.probe);
  if (verdict === "healthy") return;
  // What the runtime sees now and what the sandbox said: a failure here must explain itself.
  const now = await h.runtime.inspect(info.user, info.slot).catch((err: unknown) => String(err));
  const lines = await logText(h.runtime.logs(info.user, info.slot, { tail: 20, follow: false })).catch((err: unknown) => String(err));
  assert.fail(`${info.name} at ${JSON.stringify(info.endpoint)}: ${verdict}; the runtime now sees ${JSON.stringify(now)}; its last log lines:\n${lines}`);
}

export async function rejectsWith(promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (err: unknown) => err instanceof HypervisorError && err.code === code);
}

/**
 * The one suite every ContainerRuntime passes. It drives a sandbox (a real one, except for the
 * fake runtime) through its whole lifecycle and checks what the control plane relies on.
 */
export function runtimeContract(name: string, setup: () => Promise<RuntimeHarness>, skip: string | false = false): void {
  describe(`ContainerRuntime contract: ${name}`, { skip }, () => {
    let h: RuntimeHarness;
    const user = `${runId}-contract`;
    let spec: SandboxSpec;
    let tasks: SandboxTasks;

    before(async () => {
      h = await setup();
      tasks = h.tasks ?? referenceTasks;
      spec = {
        user,
        slot: "a",
        generation: h.generation,
        env: { SANDBOX_GREETING: "hello" },
        limits: { memoryBytes: 256 * 1024 * 1024, nanoCpus: 500_000_000, pids: 128 },
      };
    });
    after(async () => {
      await h?.runtime.remove(user, "a", { removeData: true }).catch(() => undefined);
      await h?.runtime.remove(user, "b", { removeData: true }).catch(() => undefined);
      await h?.dispose();
    });

    it("answers ping when its backing system is up", async () => {
      await h.runtime.ping();
    });

    it("creates a sandbox without starting it and refuses a second create", async () => {
      const info = await h.runtime.create(spec);
      assert.equal(info.running, false);
      assert.equal(info.name, `hv-${user}-a`);
      assert.equal(info.generationId, h.generation.id);
      await rejectsWith(h.runtime.create(spec), "conflict");
    });

    it("starts it on its host (127.0.0.1 for real runtimes) and it becomes healthy", async () => {
      const info = await h.runtime.start(user, "a");
      assert.equal(info.running, true);
      if (h.host instanceof RegExp) assert.match(info.endpoint?.host ?? "", h.host);
      else assert.equal(info.endpoint?.host, h.host ?? "127.0.0.1");
      await healthy(h, info);
    });

    it("holds the configured memory (no swap), CPU and pids limits in the kernel's cgroup of its main process", async (t) => {
      if (!h.pidOf) return t.skip("no real process");
      const info = (await h.runtime.inspect(user, "a"))!;
      const held = limitsOf(await h.pidOf(info));
      assert.equal(held.memoryLimit, spec.limits.memoryBytes);
      if (held.memorySwapLimit !== undefined) assert.equal(held.memorySwapLimit, spec.limits.memoryBytes, "no swap beyond the memory limit");
      assert.equal(held.cpus, spec.limits.nanoCpus / 1e9);
      assert.equal(held.pidsMax, spec.limits.pids);
    });

    it("gives the sandbox the contract's variables and nothing of the hypervisor's environment", async () => {
      const info = (await h.runtime.inspect(user, "a"))!;
      const env = await h.envOf(info);
      assert.equal(env.HYPERVISOR_USER, user);
      assert.equal(env.HYPERVISOR_SLOT, "a");
      assert.equal(env.HYPERVISOR_GENERATION, String(h.generation.id));
      assert.equal(env.SANDBOX_GREETING, "hello");
      assert.ok(env.DATA_DIR && env.PORT);
      for (const [k, v] of Object.entries(env)) {
        assert.ok(!v.includes(FAKE_SECRET), `${k} carries the hypervisor's secret`);
        assert.ok([...CONTRACT_ENV, "SANDBOX_GREETING", ...h.runtimeEnv].includes(k), `unexpected variable ${k} in the sandbox`);
      }
    });

    it("lists it by label with its user, slot and generation", async () => {
      const found = (await h.runtime.list()).filter((i) => i.user === user);
      assert.deepEqual(
        found.map((i) => [i.slot, i.generationId, i.running]),
        [["a", h.generation.id, true]],
      );
    });

    it("keeps data across stop and start", async () => {
      const info = (await h.runtime.inspect(user, "a"))!;
      await tasks.run(info, "before-stop");
      await h.runtime.stop(user, "a", 5000);
      const stopped = (await h.runtime.inspect(user, "a"))!;
      assert.equal(stopped.running, false);
      assert.equal(stopped.endpoint, undefined);
      await h.runtime.stop(user, "a", 5000); // stopping twice is a no-op
      const again = await h.runtime.start(user, "a");
      await healthy(h, again);
      assert.deepEqual(await tasks.inputs(again), ["before-stop"]);
    });

    it("restarts it with its data", async () => {
      const info = await h.runtime.restart(user, "a", 5000);
      await healthy(h, info);
      assert.deepEqual(await tasks.inputs(info), ["before-stop"]);
    });

    it("freezes a running sandbox and thaws it: frozen in inspect and list, silent meanwhile, the same sandbox after", async (t) => {
      const f = h.freezing;
      if (!f) return t.skip("this runtime cannot freeze here");
      const running = (await h.runtime.inspect(user, "a"))!;
      await f.freeze(user, "a");
      await f.freeze(user, "a"); // freezing a frozen sandbox is a no-op
      const frozen = (await h.runtime.inspect(user, "a"))!;
      assert.deepEqual([frozen.running, frozen.frozen, frozen.id, frozen.startedAt], [true, true, running.id, running.startedAt]);
      assert.deepEqual(frozen.endpoint, running.endpoint, "its endpoint stays: a request waits for the thaw");
      assert.equal((await h.runtime.list()).find((i) => i.user === user)?.frozen, true);
      assert.equal(await (h.probe ?? httpHealthProbe).probe(frozen.endpoint!, 500), false, "a frozen sandbox answers nothing");
      await f.thaw(user, "a");
      await f.thaw(user, "a"); // thawing a running sandbox is a no-op
      const thawed = (await h.runtime.inspect(user, "a"))!;
      assert.equal(thawed.frozen ?? false, false);
      assert.equal(thawed.startedAt, running.startedAt, "not restarted");
      await healthy(h, thawed);
      assert.deepEqual(await tasks.inputs(thawed), ["before-stop"]);

      // A frozen sandbox stops as any other (Podman refuses to stop a paused container by itself).
      await f.freeze(user, "a");
      await h.runtime.stop(user, "a", 5000);
      assert.equal((await h.runtime.inspect(user, "a"))?.running, false);
      await rejectsWith(f.freeze(user, "a"), "not_found");
      await rejectsWith(f.thaw(user, "a"), "not_found");
      const again = await h.runtime.start(user, "a");
      assert.equal(again.frozen ?? false, false, "a new start is never frozen");
      await healthy(h, again);
    });

    const lines = async (tail: number) => {
      const out: string[] = [];
      for await (const line of h.runtime.logs(user, "a", { tail, follow: false })) out.push(line);
      return out;
    };
    const probe = async () => (h.probe ?? httpHealthProbe).probe((await h.runtime.inspect(user, "a"))!.endpoint!);

    it("shows the sandbox's output in its logs, oldest first, the last `tail` lines", async () => {
      await probe();
      // The probe's own line may reach the log a moment later (Podman's conmon writes it): the
      // last two are compared with a whole log read before and after them that did not change.
      let all: string[] = [];
      let last: string[] = [];
      for (let tries = 0; tries < 20; tries++) {
        all = await lines(10_000);
        last = await lines(2);
        if (JSON.stringify(await lines(10_000)) === JSON.stringify(all)) break;
        await sleep(100);
      }
      assert.ok(
        all.some((l) => /\/health/.test(l)),
        `no /health in ${JSON.stringify(all)}`,
      );
      assert.ok(
        all.every((l) => !l.includes("\n")),
        "one line per item",
      );
      assert.deepEqual(last, all.slice(-2));
      assert.deepEqual(await lines(0), []);
    });

    it("follows the logs: a line written later arrives, and the caller's signal ends the stream", async () => {
      const before = (await lines(10_000)).length;
      const stop = new AbortController();
      const seen: string[] = [];
      const following = (async () => {
        for await (const line of h.runtime.logs(user, "a", { tail: 0, follow: true, signal: stop.signal })) {
          seen.push(line);
          if (/\/health/.test(line)) stop.abort();
        }
      })();
      // Probed until the follower saw it: the follower may attach after the first probe's line.
      for (let tries = 0; !stop.signal.aborted && tries < 100; tries++) {
        await probe();
        await Promise.race([following, new Promise((r) => setTimeout(r, 100))]);
      }
      stop.abort();
      await following;
      assert.ok(
        seen.some((l) => /\/health/.test(l)),
        `followed ${JSON.stringify(seen)}`,
      );
      assert.ok((await lines(10_000)).length > before);
    });

    it("ends a followed log when the sandbox stops", async () => {
      const following = logText(h.runtime.logs(user, "a", { tail: 1, follow: true }));
      await h.runtime.stop(user, "a", 5000);
      assert.equal(typeof (await following), "string");
      await healthy(h, await h.runtime.start(user, "a"));
    });

    /** Removes the sandbox, with or without its data, creates and starts it again, and reads back what it holds. */
    const recreatedInputs = async (removeData: boolean): Promise<string[]> => {
      await h.runtime.remove(user, "a", { removeData });
      assert.equal(await h.runtime.inspect(user, "a"), undefined);
      await h.runtime.create(spec);
      const info = await h.runtime.start(user, "a");
      await healthy(h, info);
      return tasks.inputs(info);
    };

    it("keeps data when removed without removeData and recreated", async () => {
      assert.deepEqual(await recreatedInputs(false), ["before-stop"]);
    });

    it("removes data with removeData", async () => {
      assert.deepEqual(await recreatedInputs(true), []);
      await h.runtime.remove(user, "a", { removeData: true });
    });

    it("removes the data an earlier removal kept, when removed again with removeData", async () => {
      await h.runtime.create(spec);
      const info = await h.runtime.start(user, "a");
      await healthy(h, info);
      await tasks.run(info, "kept");
      await h.runtime.remove(user, "a", { removeData: false });
      await h.runtime.remove(user, "a", { removeData: true });
      assert.deepEqual(await recreatedInputs(false), []);
      await h.runtime.remove(user, "a", { removeData: true });
    });

    it("answers not_found for a sandbox that does not exist", async () => {
      await rejectsWith(h.runtime.start(user, "b"), "not_found");
      await rejectsWith(h.runtime.stop(user, "b", 1000), "not_found");
      await rejectsWith(logText(h.runtime.logs(user, "b", { tail: 10, follow: false })), "not_found");
      assert.equal(await h.runtime.inspect(user, "b"), undefined);
      await h.runtime.remove(user, "b", { removeData: true }); // removing nothing is fine
    });
  });
}

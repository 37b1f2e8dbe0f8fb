import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { loadConfig, type Config } from "../../hypervisor/config.js";
import type { Generation } from "../../hypervisor/generations/generation-store.js";
import { createLogger } from "../../hypervisor/logger.js";
import { RouteStore } from "../../hypervisor/routing/route-store.js";
import { FakeRuntime } from "../../hypervisor/runtime/fake-runtime.js";
import { buildServices, type Services } from "../../hypervisor/services.js";
import { UserStore } from "../../hypervisor/users/user-store.js";
import { daemonEnv } from "./daemon.js";

export type ControlPlaneConfig = Pick<
  Config,
  | "startTimeoutMs"
  | "idleStopMs"
  | "idleFreezeMs"
  | "memoryReserveBytes"
  | "maxSandboxes"
  | "sandboxEnv"
  | "sandboxLimits"
  | "rollbackDeadlineMs"
  | "knownGoodAfterMs"
>;

const defaults: ControlPlaneConfig = {
  startTimeoutMs: 10_000,
  idleStopMs: 0,
  idleFreezeMs: 0,
  memoryReserveBytes: 0,
  maxSandboxes: 10,
  sandboxEnv: {},
  sandboxLimits: { memoryBytes: 64 * 1024 * 1024, nanoCpus: 1e9, pids: 64, logBytes: 10 * 1024 * 1024, diskBytes: 2 * 1024 ** 3 },
  rollbackDeadlineMs: 5000,
  knownGoodAfterMs: 60_000,
};

/**
 * The control plane as the daemon wires it (the same buildServices, metrics included), on a
 * FakeRuntime and a real SQLite file, with no listener and no background work started.
 */
export interface ControlPlane extends Services {
  runtime: FakeRuntime;
  /** The route table and the users as SQLite holds them: independent views on the same database. */
  store: RouteStore;
  userStore: UserStore;
  /** The generation every user starts with on both slots. */
  g1: number;
  /** Records another generation (a candidate) for the fake runtime, or for `runtime`. */
  addGeneration(version: string, runtime?: Generation["runtime"]): number;
}

/**
 * Builds a fresh control plane for one test, with `users` already registered (live = slot a),
 * and closes and removes it when the test ends.
 */
export async function controlPlane(
  t: TestContext,
  opts: { users?: string[]; config?: Partial<ControlPlaneConfig>; memAvailable?: () => Promise<number> } = {},
): Promise<ControlPlane> {
  const dir = mkdtempSync(join(tmpdir(), "hv-unit-"));
  const config: Config = { ...loadConfig(daemonEnv(dir)), ...defaults, ...opts.config };
  const runtime = new FakeRuntime();
  const services = await buildServices(config, createLogger("silent"), { runtime, ...(opts.memAvailable ? { memAvailable: opts.memAvailable } : {}) });
  t.after(() => {
    services.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const addGeneration = (version: string, kind: Generation["runtime"] = "fake") =>
    services.generations.add({ runtime: kind, command: ["fake-sandbox", `--version=${version}`], version }).id;
  // The first generation of the runtime: what every new user starts with.
  const g1 = addGeneration("1");
  const create = await services.users.prepareUser();
  for (const name of opts.users ?? []) create(name);
  return { ...services, runtime, store: new RouteStore(services.db), userStore: new UserStore(services.db), g1, addGeneration };
}

/** What assert.rejects matches a HypervisorError by: its code, and its message when given. */
export function refusal(code: string, message?: RegExp): { name: string; code: string; message?: RegExp } {
  return { name: "HypervisorError", code, ...(message && { message }) };
}

/**
 * One turn of the event loop: every promise callback that can run now has run. Against the
 * fake runtime nothing waits on I/O, so whatever is still pending waits on a hold or a timer.
 */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Time stands still from 0 until the test moves it (`t.mock.timers.tick`), for the named timers
 * and Date. setImmediate stays real, so settle() still works. The ESM bindings of node:timers/promises
 * are synced too, or code that imported its setTimeout would keep the real one.
 */
export function stopClock(t: TestContext, apis: ("setTimeout" | "setInterval")[] = ["setTimeout"]) {
  t.mock.timers.enable({ apis: [...apis, "Date"], now: 0 });
  syncBuiltinESMExports();
  t.after(() => {
    t.mock.timers.reset();
    syncBuiltinESMExports();
  });
  return {
    /** Moves the clock in steps of `step` ms, letting the code run between steps, until `done`. */
    async runUntil(done: () => boolean, step: number): Promise<void> {
      for (let i = 0; !done(); i++) {
        assert.ok(i < 1000, "the awaited outcome never came");
        t.mock.timers.tick(step);
        await settle();
      }
    },
  };
}

/** Tracks whether a promise has settled, without letting its rejection go unhandled. */
export function track<T>(promise: Promise<T>): { promise: Promise<T>; done: () => boolean } {
  let settled = false;
  promise.then(
    () => (settled = true),
    () => (settled = true),
  );
  return { promise, done: () => settled };
}

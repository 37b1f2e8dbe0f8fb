import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { loadConfig } from "../../hypervisor/config.js";
import { startDaemon, type Daemon } from "../../hypervisor/daemon.js";
import { createLogger } from "../../hypervisor/logger.js";
import type { ContainerRuntime } from "../../hypervisor/runtime/container-runtime.js";
import { OperatorClient } from "./operator-client.js";
import { repoRoot } from "./paths.js";

export function tempDir(prefix = "hv-test-"): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

export function daemonEnv(stateDir: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    HYPERVISOR_STATE_DIR: stateDir,
    HYPERVISOR_LISTEN: "127.0.0.1:0",
    HYPERVISOR_LOG_LEVEL: process.env.HV_TEST_LOG_LEVEL ?? "silent",
    HYPERVISOR_START_TIMEOUT_MS: "20000",
    // Tests play the TLS front: they connect from loopback and name the client in
    // X-Forwarded-For, so each test client can have an address of its own.
    HYPERVISOR_TRUSTED_PROXIES: "127.0.0.1/32,::1/128",
    ...extra,
  };
}

export interface TestDaemon {
  daemon: Daemon;
  operator: OperatorClient;
  publicUrl: string;
  stateDir: string;
  close(): Promise<void>;
}

/** The real daemon, in this process, on port 0 with its own state dir. */
export async function bootDaemon(opts: { env?: Record<string, string>; stateDir?: string; runtime?: ContainerRuntime } = {}): Promise<TestDaemon> {
  const dir = opts.stateDir ? undefined : tempDir();
  const stateDir = opts.stateDir ?? dir!.path;
  const config = loadConfig(daemonEnv(stateDir, opts.env));
  const daemon = await startDaemon(config, createLogger(config.logLevel), opts.runtime);
  return {
    daemon,
    operator: new OperatorClient({ socketPath: daemon.operatorSocket }),
    publicUrl: `http://127.0.0.1:${daemon.publicAddress.port}`,
    stateDir,
    async close() {
      await daemon.close();
      dir?.remove();
    },
  };
}

export interface SpawnedDaemon {
  child: ChildProcess;
  operator: OperatorClient;
  output(): string;
  kill(signal: NodeJS.Signals): Promise<number | null>;
}

/** The real daemon as its own OS process (`node dist/hypervisor/main.js`), for crash tests. */
export async function spawnDaemon(env: Record<string, string>): Promise<SpawnedDaemon> {
  const child = spawn(process.execPath, [join(repoRoot, "dist/hypervisor/main.js")], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout!.on("data", (c: Buffer) => (output += c.toString()));
  child.stderr!.on("data", (c: Buffer) => (output += c.toString()));
  const operator = new OperatorClient({ socketPath: join(env.HYPERVISOR_STATE_DIR!, "operator.sock") });
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`daemon exited with ${child.exitCode}: ${output}`);
    const up = await operator.get("/status").then(
      (r) => r.status === 200,
      () => false,
    );
    if (up) break;
    if (Date.now() > deadline) throw new Error(`daemon did not answer within 15 s: ${output}`);
    await sleep(50);
  }
  return {
    child,
    operator,
    output: () => output,
    kill(signal) {
      const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
      child.kill(signal);
      return exited;
    },
  };
}

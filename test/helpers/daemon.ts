import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { runId } from "./run-id.js";
import { loadConfig } from "../../hypervisor/config.js";
import { startDaemon, type Daemon } from "../../hypervisor/daemon.js";
import { createLogger } from "../../hypervisor/logger.js";
import type { ContainerRuntime } from "../../hypervisor/runtime/container-runtime.js";
import type { EgressOptions } from "../../hypervisor/egress/egress.js";
import type { ListenSockets } from "./listen-sockets.js";
import { OperatorClient } from "./operator-client.js";
import { repoRoot } from "./paths.js";

/** A fresh directory; removing it also removes the sandbox data a daemon kept beside it (`sandboxDataDir`). */
export function tempDir(prefix = "hv-test-"): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return {
    path,
    remove: () => {
      rmSync(path, { recursive: true, force: true });
      rmSync(sandboxDataDir(path), { recursive: true, force: true });
    },
  };
}

/** Sandbox data lives beside the state dir, never inside it, as ./sandboxes beside ./var for `npm start`. */
export function sandboxDataDir(stateDir: string): string {
  return `${stateDir}-sandboxes`;
}

/** 10.253.x.y from the run id: the gateway address of this test process's daemons (never 10.253.0.1, a real daemon's default). */
export function egressAddress(id = runId): string {
  const n = Number.parseInt(id.slice(1, 5), 16);
  return `10.253.${((n >> 8) % 255) + 1}.${n & 0xff || 1}`;
}

export function daemonEnv(stateDir: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    HYPERVISOR_STATE_DIR: stateDir,
    HYPERVISOR_SANDBOX_DATA_DIR: sandboxDataDir(stateDir),
    HYPERVISOR_LISTEN: "127.0.0.1:0",
    HYPERVISOR_LOG_LEVEL: process.env.HV_TEST_LOG_LEVEL ?? "silent",
    HYPERVISOR_START_TIMEOUT_MS: "20000",
    // Tests never depend on this machine's free memory; the memory reserve's tests set their own.
    HYPERVISOR_MEMORY_RESERVE: "0",
    // Tests play the TLS front: they connect from loopback and name the client in
    // X-Forwarded-For, so each test client can have an address of its own.
    HYPERVISOR_TRUSTED_PROXIES: "127.0.0.1/32,::1/128",
    // No egress unless a test asks for it (the egress suites): a daemon a test kills leaves no
    // gateway link or host rules behind. A gateway is on an address of this run's own (and the
    // kernel's port), so test processes never share one, nor touch a real daemon's.
    HYPERVISOR_EGRESS: "none",
    HYPERVISOR_EGRESS_LISTEN: `${egressAddress()}:0`,
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
export async function bootDaemon(
  opts: { env?: Record<string, string>; stateDir?: string; runtime?: ContainerRuntime; egress?: EgressOptions } = {},
): Promise<TestDaemon> {
  const dir = opts.stateDir ? undefined : tempDir();
  const stateDir = opts.stateDir ?? dir!.path;
  const config = loadConfig(daemonEnv(stateDir, opts.env));
  const daemon = await startDaemon(config, createLogger(config.logLevel), { runtime: opts.runtime, egress: opts.egress });
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

/**
 * The real daemon as its own OS process (`node dist/hypervisor/main.js`), for crash tests; with
 * `sockets`, socket-activated as systemd starts it: the held listeners as descriptors 3 and 4,
 * named by LISTEN_FDNAMES, and LISTEN_PID set to the daemon's own pid (sd_listen_fds(3)). That pid
 * exists only after the fork, so a shell sets LISTEN_PID=$$ and execs node in its own place.
 */
export async function spawnDaemon(
  env: Record<string, string>,
  opts: { sockets?: ListenSockets; nodeArgs?: string[]; inherit?: { fd: number; at: number } } = {},
): Promise<SpawnedDaemon> {
  const main = join(repoRoot, "dist/hypervisor/main.js");
  const { sockets, nodeArgs = [], inherit } = opts;
  // `inherit`: one more descriptor, open in the daemon at `at` without close-on-exec, as a shell's `exec 100<file` leaves it.
  const extra = inherit ? [...Array<"ignore">(inherit.at - 3).fill("ignore"), inherit.fd] : [];
  const child = sockets
    ? spawn("/bin/sh", ["-c", 'LISTEN_PID=$$ exec "$0" "$@"', process.execPath, ...nodeArgs, main], {
        env: { ...process.env, ...env, LISTEN_FDS: "2", LISTEN_FDNAMES: "public:operator" },
        stdio: ["ignore", "pipe", "pipe", ...sockets.fds],
      })
    : spawn(process.execPath, [...nodeArgs, main], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe", ...extra] });
  let output = "";
  child.stdout!.on("data", (c: Buffer) => (output += c.toString()));
  child.stderr!.on("data", (c: Buffer) => (output += c.toString()));
  const operator = new OperatorClient({ socketPath: join(env.HYPERVISOR_STATE_DIR!, "operator.sock") });
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`daemon exited with ${child.exitCode}: ${output}`);
    // A held socket queues the request until a daemon accepts: give up on it if this one died.
    const up = await operator.send("GET", "/status", undefined, {}, { agent: false, timeoutMs: 1000 }).then(
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

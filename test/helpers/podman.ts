import { execFile, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { LABELS } from "../../hypervisor/runtime/container-runtime.js";
import { after } from "node:test";
import { repoRoot } from "./paths.js";
import { runId } from "./run-id.js";
import { removePodmanFence } from "../../hypervisor/runtime/podman-fence.js";
import { egressAddress } from "./daemon.js";

const run = promisify(execFile);

export const containersConf = join(repoRoot, "test/podman/containers.conf");
// Built at each call so a variable a test sets later (the fake secret) reaches Podman too.
export const podmanEnv = () => ({ ...process.env, CONTAINERS_CONF: containersConf });
export const SANDBOX_IMAGE = "localhost/hypervisor-sandbox:latest";

export function podmanInstalled(): boolean {
  return spawnSync("podman", ["--version"], { stdio: "ignore" }).status === 0;
}

/**
 * Podman suites need Podman. In CI a missing Podman is a failure, never a silent skip;
 * on a developer machine without it the suite is skipped with the reason.
 */
export function podmanSkipReason(): string | false {
  if (podmanInstalled()) return false;
  if (process.env.CI === "true") throw new Error("podman is not installed, and CI=true requires the Podman suites to run");
  return "podman is not installed (apt-get install podman runc)";
}

/** The podman CLI, as a witness independent of the code under test. */
export async function podman(...args: string[]): Promise<string> {
  // Bounded: a Podman wedged on its store's lock fails the test that met it, where it can be
  // seen, instead of hanging the whole run.
  const { stdout } = await run("podman", args, { env: podmanEnv(), maxBuffer: 64 * 1024 * 1024, timeout: 120_000, killSignal: "SIGKILL" });
  return stdout;
}

/**
 * `podman rm -f`, tried again while Podman 4 fails to unlink a just-stopped container's /dev/shm
 * mount point (EBUSY, containers/podman#11594): its cleanup still runs, and a moment later the
 * same removal succeeds.
 */
export async function removeContainer(nameOrId: string, ...options: string[]): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await podman("rm", "-f", ...options, nameOrId);
      return;
    } catch (err) {
      if (attempt === 5 || !(err as Error).message.includes("device or resource busy")) throw err;
      await sleep(200);
    }
  }
}

/** A private Podman API service on its own socket, which a test may stop and start again. */
export class PodmanService {
  readonly dir = mkdtempSync(join(tmpdir(), "hv-podman-"));
  readonly socketPath = join(this.dir, "podman.sock");
  private child: ChildProcess | undefined;

  async start(): Promise<void> {
    this.child = spawn("podman", ["system", "service", "--time=0", `unix://${this.socketPath}`], {
      env: podmanEnv(),
      stdio: "ignore",
    });
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      if (existsSync(this.socketPath) && (await pingSocket(this.socketPath))) return;
      if (this.child.exitCode !== null) throw new Error(`podman system service exited with ${this.child.exitCode}`);
      await sleep(50);
    }
    throw new Error("podman system service did not come up within 15 s");
  }

  /** Stops the service (SIGKILL: kills it) and removes its socket: what an operator sees when Podman is down. */
  async stop(signal: "SIGTERM" | "SIGKILL" = "SIGTERM"): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (child && child.exitCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill(signal);
      await Promise.race([exited, sleep(5000).then(() => child.kill("SIGKILL"))]);
    }
    rmSync(this.socketPath, { force: true });
  }

  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

async function pingSocket(socketPath: string): Promise<boolean> {
  const { request } = await import("node:http");
  return new Promise((resolve) => {
    const req = request({ socketPath, path: "/_ping", timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on("error", () => resolve(false));
    req.on("timeout", () => req.destroy());
    req.end();
  });
}

/** Managed containers whose user label starts with `prefix`, counted by podman itself. */
export async function managedContainers(prefix: string): Promise<{ id: string; name: string; user: string; slot: string; running: boolean }[]> {
  const out = await podman("ps", "-a", "--filter", `label=${LABELS.managed}=true`, "--format", "json");
  const rows = JSON.parse(out || "[]") as { Id: string; Names: string[]; Labels: Record<string, string>; State: string }[];
  return rows
    .filter((r) => r.Labels[LABELS.user]?.startsWith(prefix))
    .map((r) => ({
      id: r.Id,
      name: r.Names[0] ?? "",
      user: r.Labels[LABELS.user]!,
      slot: r.Labels[LABELS.slot]!,
      running: r.State === "running",
    }));
}

/**
 * Removes every container, volume and network a test run created: they all carry the run's id
 * in their user label (and so their names), so an earlier run's leftovers never change a result.
 */
export async function removeRunArtifacts(prefix: string): Promise<void> {
  for (const c of await managedContainers(prefix)) await removeContainer(c.id, "-t", "0").catch(() => undefined);
  const volumes = JSON.parse((await podman("volume", "ls", "--format", "json")) || "[]") as { Name: string }[];
  for (const v of volumes.filter((v) => v.Name.startsWith(`hv-${prefix}`))) await podman("volume", "rm", "-f", v.Name).catch(() => undefined);
  const networks = JSON.parse((await podman("network", "ls", "--format", "json")) || "[]") as { name?: string; Name?: string }[];
  for (const n of networks.map((n) => n.name ?? n.Name ?? "").filter((n) => n.startsWith(`hv-${prefix}`))) {
    await podman("network", "rm", "-f", n).catch(() => undefined);
  }
  // The whole run's artifacts: the egress fence's chains of its test daemons (their gateway
  // address comes from the run id) go too, as their networks did.
  if (prefix === runId) await removePodmanFence(egressAddress()).catch(() => undefined);
}

/** The reference image, built once if this machine does not have it yet. */
export async function ensureSandboxImage(): Promise<string> {
  const exists = spawnSync("podman", ["image", "exists", SANDBOX_IMAGE], { env: podmanEnv() }).status === 0;
  if (!exists) {
    const { buildSandboxImage } = await import("../../sandbox/build-image.js");
    await buildSandboxImage({ tag: SANDBOX_IMAGE });
  }
  return (await podman("image", "inspect", "--format", "{{.Id}}", SANDBOX_IMAGE)).trim();
}

/**
 * The Podman a suite file runs on: a private service, started at load with the reference image
 * in place (unless the suite is skipped), and at the end the run's containers, volumes and
 * networks removed and the service stopped.
 */
export async function podmanForSuite(): Promise<{ skip: string | false; service: PodmanService }> {
  const skip = podmanSkipReason();
  const service = new PodmanService();
  if (!skip) {
    await ensureSandboxImage();
    await service.start();
  }
  after(async () => {
    await removeRunArtifacts(runId);
    await service.dispose();
  });
  return { skip, service };
}

/**
 * A private Podman service with the reference image for one benchmark part; afterwards the
 * run's containers, volumes and networks are removed and the service stopped, whatever happened.
 */
export async function withPodmanService<T>(run: (service: PodmanService) => Promise<T>): Promise<T> {
  await ensureSandboxImage();
  const service = new PodmanService();
  await service.start();
  try {
    return await run(service);
  } finally {
    await removeRunArtifacts(runId);
    await service.dispose();
  }
}

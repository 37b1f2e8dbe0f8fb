// DESIGN §5a, proven from inside: a hostile generation, deployed through the operator API of a
// real daemon, tries everything an audit of the process runtime once managed (the daemon's
// environment, its state directory and database, the operator socket and token, the Podman API,
// another user's data, another sandbox's port and the hypervisor's listeners) and reports what
// it reached. On every runtime the answer must be nothing.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { networkInterfaces } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { ProbeReport, ProbeRequest } from "../fixtures/hostile-sandbox.js";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { repoRoot } from "../helpers/paths.js";
import { ensureSandboxImage, podman, podmanSkipReason, PodmanService, removeRunArtifacts, SANDBOX_IMAGE } from "../helpers/podman.js";
import { runId, testUser } from "../helpers/run-id.js";
import { baseUrl, runTask } from "../helpers/sandbox-client.js";

/** In the hypervisor's own environment (this process is the daemon); no sandbox may read it. */
const ENV_SECRET = `hv-hostile-env-${runId}-${randomBytes(8).toString("hex")}`;
process.env.HYPERVISOR_FAKE_SECRET_FOR_TESTS = ENV_SECRET;
const hostileScript = join(repoRoot, "dist/test/fixtures/hostile-sandbox.js");

interface SandboxRow {
  user: string;
  role: string;
  slot: "a" | "b";
  endpoint: { host: string; port: number } | null;
}

interface HostileRuntime {
  /** The daemon's runtime settings. */
  env(): Record<string, string>;
  /** The body of POST /generations that runs the hostile script. */
  generation(): Promise<Record<string, unknown>>;
  /** Where a sandbox's data lives on the host, found beside the code under test. */
  dataDirOf(t: TestDaemon, user: string, slot: "a" | "b"): Promise<string>;
  /** More that must stay out of reach: the Podman API socket, another sandbox's own address. */
  extra(t: TestDaemon, user: string, slot: "a" | "b"): Promise<Partial<Pick<ProbeRequest, "sockets" | "endpoints">>>;
  dispose(): Promise<void>;
}

function hostAddresses(): string[] {
  return Object.values(networkInterfaces())
    .flat()
    .filter((i) => i && i.family === "IPv4")
    .map((i) => i!.address);
}

function hostileSuite(name: string, runtime: HostileRuntime, skip: string | false = false): void {
  describe(`a hostile sandbox on the ${name} runtime`, { skip }, () => {
    const state = tempDir();
    const secrets = tempDir("hv-secrets-");
    const tokenFile = join(secrets.path, "operator-token");
    const token = randomBytes(24).toString("hex");
    const mallory = testUser(`${name}-mallory`);
    const bob = testUser(`${name}-bob`);
    let t: TestDaemon;
    let hostile: { host: string; port: number };

    before(async () => {
      writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
      t = await bootDaemon({
        stateDir: state.path,
        env: { HYPERVISOR_OPERATOR_LISTEN: "127.0.0.1:0", HYPERVISOR_OPERATOR_TOKEN_FILE: tokenFile, ...runtime.env() },
      });
      for (const user of [bob, mallory]) assert.equal((await t.operator.post("/users", { name: user })).status, 201);
      // Bob has data, and a running sandbox on a port of its own.
      const started = await t.operator.post<{ sandbox: SandboxRow }>(`/sandboxes/${bob}/live/start`);
      assert.equal(started.status, 200, JSON.stringify(started.body));
      await runTask(`${baseUrl(started.body.sandbox.endpoint!).replace("http", "ws")}/ws`, "bob's private task");

      const added = await t.operator.post<{ generation: { id: number } }>("/generations", await runtime.generation());
      assert.ok(added.status === 201, JSON.stringify(added.body));
      const deployed = await t.operator.post("/deploy", { generation: added.body.generation.id, users: [mallory] });
      assert.equal(deployed.status, 200, JSON.stringify(deployed.body));
      const rows = (await t.operator.get<{ sandboxes: SandboxRow[] }>(`/sandboxes?user=${mallory}`)).body.sandboxes;
      hostile = rows.find((r) => r.role === "dev")!.endpoint!;
    });
    after(async () => {
      for (const user of [bob, mallory]) for (const role of ["live", "dev"] as const) await t?.daemon.services.manager.stop(user, role).catch(() => undefined);
      await t?.close();
      await runtime.dispose();
      state.remove();
      secrets.remove();
    });

    it("still serves the sandbox contract", async () => {
      const res = await fetch(`${baseUrl(hostile)}/health`);
      assert.equal(res.status, 200);
    });

    it("reaches nothing of the hypervisor, of Podman or of another user", async () => {
      const bobSlot = t.daemon.services.routing.slotOf(bob, "live");
      const bobData = await runtime.dataDirOf(t, bob, bobSlot);
      const bobFiles = readdirSync(bobData);
      assert.ok(bobFiles.length > 0, `bob's data dir ${bobData} holds his task history`);
      const bobEndpoint = (await t.daemon.services.runtime.inspect(bob, bobSlot))!.endpoint!;
      const extra = await runtime.extra(t, bob, bobSlot);
      const request: ProbeRequest = {
        files: {
          "the database": join(state.path, "hypervisor.db"),
          "the operator token file": tokenFile,
          "the hypervisor's environment": `/proc/${process.pid}/environ`,
          ...Object.fromEntries(bobFiles.map((f) => [`bob's ${f}`, join(bobData, f)])),
        },
        dirs: { "the state directory": state.path, "bob's data directory": bobData, "the secrets directory": secrets.path },
        sockets: { "the operator socket": t.daemon.operatorSocket, "the system Podman socket": "/run/podman/podman.sock", ...extra.sockets },
        ports: {
          "the public listener": t.daemon.publicAddress.port,
          "the operator TCP listener": t.daemon.operatorAddress!.port,
          // On every address, unless it is the prober's own port too (each process sandbox
          // listens on 8080 in a network namespace of its own): then bob is tried where he is.
          ...(bobEndpoint.port !== hostile.port ? { "bob's sandbox": bobEndpoint.port } : {}),
        },
        hosts: hostAddresses(),
        endpoints: { "bob's sandbox where the proxy reaches it": `${bobEndpoint.host}:${bobEndpoint.port}`, ...extra.endpoints },
        secrets: { "the hypervisor's environment secret": ENV_SECRET, "the operator token": token, "the hypervisor's command line": "hostile-sandbox.test" },
        markers: ["hypervisor.db", "operator.sock", "operator-token"],
      };
      const res = await fetch(`${baseUrl(hostile)}/probe`, { method: "POST", body: JSON.stringify(request), signal: AbortSignal.timeout(60_000) });
      assert.equal(res.status, 200, await res.clone().text());
      const report = (await res.json()) as ProbeReport;
      assert.deepEqual(report.reached, [], `the hostile sandbox reached what it must not; it saw:\n${JSON.stringify(report.seen, null, 1)}`);
    });
  });
}

/** DATA_DIR of the sandbox's main process, read from the host's /proc. */
function processDataDir(pid: string): string {
  const env = readFileSync(`/proc/${pid}/environ`, "latin1").split("\0");
  return env.find((e) => e.startsWith("DATA_DIR="))!.slice("DATA_DIR=".length);
}

hostileSuite("process", {
  env: () => ({}),
  generation: async () => ({ command: [process.execPath, hostileScript], version: "hostile" }),
  dataDirOf: async (t, user, slot) => processDataDir((await t.daemon.services.runtime.inspect(user, slot))!.id),
  extra: async () => ({}),
  dispose: async () => undefined,
});

const skip = podmanSkipReason();
const service = new PodmanService();
const hostileImage = `localhost/hv-hostile:${runId}`;
if (!skip) {
  await ensureSandboxImage();
  await service.start();
}
hostileSuite(
  "podman",
  {
    env: () => ({ HYPERVISOR_RUNTIME: "podman", HYPERVISOR_PODMAN_SOCKET: service.socketPath }),
    // The reference image with the hostile script beside the sandbox app, so it finds the same node.
    generation: async () => {
      const context = tempDir("hv-hostile-image-");
      try {
        mkdirSync(join(context.path, "app"));
        copyFileSync(hostileScript, join(context.path, "app", "hostile-sandbox.js"));
        writeFileSync(
          join(context.path, "Containerfile"),
          [
            `FROM ${SANDBOX_IMAGE}`,
            "COPY app/hostile-sandbox.js /app/hostile/hostile-sandbox.js",
            'CMD ["/usr/bin/node", "/app/hostile/hostile-sandbox.js"]',
            "",
          ].join("\n"),
        );
        await podman("build", "-q", "--pull=never", "-t", hostileImage, context.path);
      } finally {
        context.remove();
      }
      return { image: hostileImage };
    },
    dataDirOf: async (_t, user, slot) => JSON.parse(await podman("volume", "inspect", `hv-${user}-${slot}-data`))[0].Mountpoint as string,
    extra: async (_t, user, slot) => {
      const inspected = JSON.parse(await podman("inspect", `hv-${user}-${slot}`))[0] as {
        NetworkSettings: { Networks: Record<string, { IPAddress: string }> };
      };
      return {
        sockets: { "the hypervisor's Podman socket": service.socketPath },
        endpoints: Object.fromEntries(
          Object.entries(inspected.NetworkSettings.Networks).map(([net, n]) => [`bob's container on ${net}`, `${n.IPAddress}:8080`]),
        ),
      };
    },
    dispose: async () => {
      await removeRunArtifacts(runId);
      await podman("rmi", "-f", hostileImage).catch(() => undefined);
      await service.dispose();
    },
  },
  skip,
);

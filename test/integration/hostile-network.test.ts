// DESIGN §5a, the network half, proven by the attacks themselves: a hostile generation on the
// process runtime tries what an audit of the landed code managed while process sandboxes shared
// the host's network namespace (F1, F2, F6, F7, F15, F16, F18), each below by its name. Each
// sandbox now has a network namespace of its own, reached only at an address only it has.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createSocket } from "node:dgram";
import { writeFileSync } from "node:fs";
import { connect, createServer, type AddressInfo, type Server } from "node:net";
import { networkInterfaces } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { Endpoint } from "../../proxy/target.js";
import type { ProbeReport, SquatReport } from "../fixtures/hostile-sandbox.js";
import { PublicClient } from "../helpers/authenticator.js";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { repoRoot } from "../helpers/paths.js";
import { ensureSandboxImage, podman, podmanSkipReason, removeContainer, SANDBOX_IMAGE } from "../helpers/podman.js";
import { runId, testUser } from "../helpers/run-id.js";
import { baseUrl } from "../helpers/sandbox-client.js";

const ORIGIN = "http://localhost:8080";
const hostileScript = join(repoRoot, "dist/test/fixtures/hostile-sandbox.js");
/** Long enough for a squatter polling every 20 ms to take a port many times over. */
const SQUAT_WINDOW_MS = 1000;

function hostAddresses(): string[] {
  return Object.values(networkInterfaces())
    .flat()
    .filter((i) => i && i.family === "IPv4")
    .map((i) => i!.address);
}

/** A port free on this host now (the kernel's pick, released). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Whether a TCP connection from this host opens. */
function connects(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1500, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

describe("a hostile process sandbox and the host's network (DESIGN §5a)", { skip: process.getuid?.() === 0 ? false : "needs root: network namespaces" }, () => {
  const state = tempDir();
  const secrets = tempDir("hv-secrets-");
  const tokenFile = join(secrets.path, "operator-token");
  const token = randomBytes(24).toString("hex");
  const bob = testUser("net-bob");
  const mallory = testUser("net-mallory");
  let t: TestDaemon;
  let hostile: Endpoint;
  const cleanups: (() => Promise<unknown> | unknown)[] = [];

  const daemonEnv = (publicPort = 0, operatorPort = 0) => ({
    HYPERVISOR_PUBLIC_ORIGIN: ORIGIN,
    HYPERVISOR_LISTEN: `127.0.0.1:${publicPort}`,
    HYPERVISOR_OPERATOR_LISTEN: `127.0.0.1:${operatorPort}`,
    HYPERVISOR_OPERATOR_TOKEN_FILE: tokenFile,
  });
  const tell = async <T>(path: string, input?: unknown): Promise<T> => {
    const res = await fetch(`${baseUrl(hostile)}${path}`, {
      method: input === undefined ? "GET" : "POST",
      body: input === undefined ? undefined : JSON.stringify(input),
      signal: AbortSignal.timeout(30_000),
    });
    assert.equal(res.status, 200, await res.clone().text());
    return (await res.json()) as T;
  };
  const bobClient = () => {
    const client = new PublicClient(t.publicUrl, ORIGIN);
    client.cookie = t.daemon.services.sessions.create(bob, "full").token;
    return client;
  };

  before(async () => {
    writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
    t = await bootDaemon({ stateDir: state.path, env: daemonEnv() });
    for (const user of [bob, mallory]) assert.equal((await t.operator.post("/users", { name: user })).status, 201);
    assert.equal((await t.operator.post(`/sandboxes/${bob}/live/start`)).status, 200);
    const added = await t.operator.post<{ generation: { id: number } }>("/generations", { command: [process.execPath, hostileScript], version: "hostile-net" });
    assert.equal(added.status, 201, JSON.stringify(added.body));
    const deployed = await t.operator.post("/deploy", { generation: added.body.generation.id, users: [mallory] });
    assert.equal(deployed.status, 200, JSON.stringify(deployed.body));
    hostile = (await t.daemon.services.manager.ensure(mallory, "dev")).endpoint;
  });
  after(async () => {
    for (const cleanup of cleanups) await Promise.resolve(cleanup()).catch(() => undefined);
    for (const user of [bob, mallory]) for (const role of ["live", "dev"] as const) await t?.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t?.close().catch(() => undefined);
    state.remove();
    secrets.remove();
  });

  it("F1: a sandbox that waits for a dead neighbour's port takes neither its address nor its traffic", async () => {
    const slot = t.daemon.services.routing.slotOf(bob, "live");
    const victim = (await t.daemon.services.runtime.inspect(bob, slot))!;
    await tell("/squat", { targets: [{ label: "bob's sandbox", host: victim.endpoint!.host, port: victim.endpoint!.port }] });
    // Bob's sandbox dies (SIGKILL: no chance to close anything), while the squatter polls.
    process.kill(Number(victim.id), "SIGKILL");
    await sleep(SQUAT_WINDOW_MS);
    const client = bobClient();
    for (let i = 0; i < 10; i++) {
      await client.get("/whoami").catch(() => undefined);
      await sleep(100);
    }
    const report = await tell<SquatReport>("/squatted");
    assert.deepEqual(report.bound, [], "no other sandbox can bind the address the proxy reaches bob at");
    assert.deepEqual(report.received, [], "none of bob's requests reached another sandbox");
  });

  it("F6: UDP to the loopback broadcast address and the host's addresses reaches no host service", async () => {
    const service = createSocket("udp4");
    const received: string[] = [];
    service.on("message", (message) => received.push(message.toString()));
    await new Promise<void>((resolve) => service.bind(0, "0.0.0.0", resolve));
    cleanups.push(() => service.close());
    const port = service.address().port;
    const payload = `hostile-${runId}`;
    const targets = ["127.255.255.255", "127.0.0.1", ...hostAddresses()].map((host) => ({ host, port }));
    await tell("/udp", { targets, payload });
    await sleep(500);
    assert.deepEqual(received, [], "a host service on 0.0.0.0 received a sandbox's datagram");
  });

  it("F7: what a sandbox listens on is on none of the host's addresses", async () => {
    const port = await freePort();
    const listened = await tell<{ listening: boolean }>("/listen", { port });
    assert.equal(listened.listening, true, "it may listen in its own network");
    const reached: string[] = [];
    for (const host of ["127.0.0.1", ...hostAddresses()]) if (await connects(host, port)) reached.push(`${host}:${port}`);
    assert.deepEqual(reached, [], "a sandbox's listener was reachable on the host's addresses, outside the proxy");
  });

  it("F15, F18: /proc/net shows none of the host's listeners or socket paths, and host abstract sockets are out of reach", async () => {
    const abstract = `hv-${runId}-abstract-${randomBytes(4).toString("hex")}`;
    // The prober hangs up at once: a reset here is its doing, not the test's failure.
    const server: Server = createServer((socket) => socket.on("error", () => undefined).end("host abstract socket"));
    await new Promise<void>((resolve) => server.listen(`\0${abstract}`, resolve));
    cleanups.push(() => new Promise((resolve) => server.close(resolve)));
    const view = await tell<{ listeners: number[]; unixPaths: string[]; abstractReached: string[] }>("/network-view", {
      ports: [t.daemon.publicAddress.port, t.daemon.operatorAddress!.port],
      paths: [t.daemon.operatorSocket],
      abstract: [abstract],
    });
    // All three at once, so a failure names each finding it reproduces.
    assert.deepEqual(
      {
        "F15: the daemon's listeners in /proc/net/tcp": view.listeners,
        "F15: the operator socket in /proc/net/unix": view.unixPaths,
        "F18: host abstract sockets reached": view.abstractReached,
      },
      { "F15: the daemon's listeners in /proc/net/tcp": [], "F15: the operator socket in /proc/net/unix": [], "F18: host abstract sockets reached": [] },
    );
  });

  const podmanSkip = podmanSkipReason();
  it("F16: a container's bridge address and its port published on loopback are out of reach", { skip: podmanSkip }, async () => {
    await ensureSandboxImage();
    const name = `hv-${runId}-neighbour`;
    cleanups.push(() => removeContainer(name, "-t", "0"));
    await podman("run", "-d", "--name", name, "-p", "127.0.0.1::8080", SANDBOX_IMAGE);
    const inspected = JSON.parse(await podman("inspect", name))[0] as {
      NetworkSettings: { Networks: Record<string, { IPAddress: string }>; Ports: Record<string, { HostPort: string }[] | null> };
    };
    const published = inspected.NetworkSettings.Ports["8080/tcp"]![0]!.HostPort;
    const endpoints: Record<string, string> = { "the container's port published on loopback": `127.0.0.1:${published}` };
    for (const [net, n] of Object.entries(inspected.NetworkSettings.Networks)) endpoints[`the container on ${net}`] = `${n.IPAddress}:8080`;
    // The container answers this host, so out of reach means out of the sandbox's reach.
    const deadline = Date.now() + 20_000;
    while (!(await connects("127.0.0.1", Number(published))) && Date.now() < deadline) await sleep(100);
    assert.equal(await connects("127.0.0.1", Number(published)), true, "the container serves this host");
    const report = await tell<ProbeReport>("/probe", { files: {}, dirs: {}, sockets: {}, ports: {}, hosts: [], endpoints, secrets: {}, markers: [] });
    assert.deepEqual(report.reached, []);
  });

  it("F2: during a restart without socket activation it takes neither of the daemon's ports nor what is sent to them", async () => {
    const publicPort = t.daemon.publicAddress.port;
    const operatorPort = t.daemon.operatorAddress!.port;
    await tell("/squat", {
      targets: [
        { label: "the public listener", host: "127.0.0.1", port: publicPort },
        { label: "the operator listener", host: "127.0.0.1", port: operatorPort },
      ],
    });
    // The daemon stops (its sandboxes keep running) and starts again on the same ports.
    await t.close();
    await sleep(SQUAT_WINDOW_MS);
    t = await bootDaemon({ stateDir: state.path, env: daemonEnv(publicPort, operatorPort) });
    const status = await fetch(`http://127.0.0.1:${operatorPort}/status`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(status.status, 200, "the restarted daemon serves its operator port");
    const whoami = await bobClient().get<{ user: string }>("/whoami");
    assert.equal(whoami.status, 200);
    const report = await tell<SquatReport>("/squatted");
    assert.deepEqual(report.received, [], "a session cookie or the operator's token reached a sandbox");
  });
});

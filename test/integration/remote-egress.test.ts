// DESIGN §5b on a remote Podman host (§8a): the host's own firewall (deploy/sandbox-host/firewall.sh,
// run here inside the simulated host's namespace) holds a hostile sandbox there to the gateway,
// which it reaches on the listener for remote hosts with its token. Without that firewall the same
// sandbox reaches the test's internet, the host's link-local address and the host itself directly:
// what every remote host allowed before.
import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { removePodmanFence } from "../../hypervisor/runtime/podman-fence.js";
import type { Endpoint } from "../../proxy/target.js";
import { bootDaemon, egressAddress, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { makeInternet, type Internet } from "../helpers/internet.js";
import { repoRoot } from "../helpers/paths.js";
import { podman, podmanForSuite, SANDBOX_IMAGE } from "../helpers/podman.js";
import { freePort } from "../helpers/ports.js";
import { runId, testUser } from "../helpers/run-id.js";
import { baseUrl } from "../helpers/sandbox-client.js";
import { SimHost } from "../helpers/sim-hosts.js";
import { egressScript } from "./egress-suite.js";

const run = promisify(execFile);
const { skip: podmanSkip, service } = await podmanForSuite();
const skip = podmanSkip || (process.getuid?.() === 0 ? false : "needs root: network namespaces and iptables");
const firewall = join(repoRoot, "deploy/sandbox-host/firewall.sh");
const n = Number.parseInt(runId.slice(1, 5), 16);
const tag = runId.slice(1, 5);
// The remote host's own link-local address (a /32 on its loopback, in its namespace only) and the
// link between it and the test's internet: addresses this test makes, named after its run.
const linkLocal = `169.254.78.${(n % 250) + 1}`;
const link = `10.248.${(n % 250) + 1}`;

interface Attempt {
  result?: string;
  status?: number;
  body?: string;
  token?: string | null;
}

async function tryFrom(sandbox: Endpoint, attempt: Record<string, unknown>): Promise<Attempt> {
  const res = await fetch(`${baseUrl(sandbox)}/try`, { method: "POST", body: JSON.stringify(attempt), signal: AbortSignal.timeout(60_000) });
  assert.equal(res.status, 200);
  return (await res.json()) as Attempt;
}

/** What a connection from this (the hypervisor's) namespace to `host:port` gets back for `head`: "" when closed unanswered. */
function answerTo(host: string, port: number, head: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    let text = "";
    socket.on("data", (chunk) => (text += chunk.toString()));
    socket.once("close", () => resolve(text));
    socket.once("error", () => undefined);
    socket.setTimeout(5000, () => socket.destroy());
    socket.write(head);
  });
}

describe("egress on a remote Podman host: its own firewall holds its sandboxes (DESIGN §5b, §8a)", { skip, timeout: 600_000 }, () => {
  const remote = new SimHost("re1");
  const image = `localhost/hv-egress-remote:${runId}`;
  const user = testUser("remote-egress");
  let internet: Internet | undefined;
  let server: ChildProcess | undefined;
  let t: TestDaemon | undefined;
  let gateway = "";
  let sandbox: Endpoint;
  const inHost = (...args: string[]) => run("nsenter", [`--net=${remote.netnsPath}`, ...args]);
  const firewallEnv = (mode: string) => ({
    ...process.env,
    HYPERVISOR_ADDRESS: remote.hypervisorAddress,
    HYPERVISOR_EGRESS: mode,
    HYPERVISOR_EGRESS_GATEWAY: gateway,
  });
  const startFirewall = (mode: string) => run("nsenter", [`--net=${remote.netnsPath}`, "sh", firewall, "start"], { env: firewallEnv(mode) });
  const stopFirewall = async () => run("nsenter", [`--net=${remote.netnsPath}`, "sh", firewall, "stop"]);
  const direct = async () => ({
    internet: (await tryFrom(sandbox, { kind: "tcp", host: internet!.address, port: 80 })).result,
    linkLocal: (await tryFrom(sandbox, { kind: "tcp", host: linkLocal, port: 80 })).result,
    host: (await tryFrom(sandbox, { kind: "tcp", host: remote.address, port: 80 })).result,
  });

  before(async () => {
    internet = await makeInternet();
    await remote.startUnix(9);
    // A direct link from the remote host to the internet, beside the one through the hypervisor's
    // namespace: what the host's sandboxes reach when nothing holds them.
    const [mine, theirs] = [`hvrh${tag}`, `hvri${tag}`];
    await run("ip", ["link", "add", mine, "netns", remote.netnsPath.split("/").pop()!, "type", "veth", "peer", "name", theirs, "netns", internet.netns]);
    await inHost("ip", "addr", "add", `${link}.1/30`, "dev", mine);
    await inHost("ip", "link", "set", mine, "up");
    await inHost("ip", "route", "add", `${internet.address}/32`, "via", `${link}.2`);
    await run("ip", ["-n", internet.netns, "addr", "add", `${link}.2/30`, "dev", theirs]);
    await run("ip", ["-n", internet.netns, "link", "set", theirs, "up"]);
    // The host's own services: one listener on its link-local address and its own, in its namespace only.
    await inHost("ip", "addr", "add", `${linkLocal}/32`, "dev", "lo");
    server = spawn(
      "nsenter",
      [
        `--net=${remote.netnsPath}`,
        process.execPath,
        "-e",
        'require("http").createServer((q, r) => r.end("host")).listen(80, "0.0.0.0", () => console.log("up"))',
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    await new Promise<void>((resolve, reject) => {
      server!.once("exit", (code) => reject(new Error(`the host's listener exited with ${code}`)));
      server!.stdout!.once("data", () => resolve());
    });

    const context = tempDir("hv-remote-egress-image-");
    try {
      mkdirSync(join(context.path, "app"));
      copyFileSync(egressScript, join(context.path, "app", "egress-sandbox.js"));
      writeFileSync(
        join(context.path, "Containerfile"),
        [
          `FROM ${SANDBOX_IMAGE}`,
          "COPY app/egress-sandbox.js /app/egress/egress-sandbox.js",
          'CMD ["/usr/bin/node", "/app/egress/egress-sandbox.js"]',
          "",
        ].join("\n"),
      );
      await podman("build", "-q", "--pull=never", "-t", image, context.path);
    } finally {
      context.remove();
    }

    gateway = `${remote.hypervisorAddress}:${await freePort()}`;
    const names: Record<string, string[]> = { "internet.test": [internet.address], "elsewhere.test": [internet.address] };
    t = await bootDaemon({
      env: {
        HYPERVISOR_RUNTIME: "podman",
        HYPERVISOR_PODMAN_SOCKET: service.socketPath,
        HYPERVISOR_EGRESS: "gateway",
        HYPERVISOR_EGRESS_ALLOW: `internet.test,${internet.cidr}`,
        HYPERVISOR_EGRESS_REMOTE_LISTEN: gateway,
      },
      egress: {
        // The gateway's DNS, played here: names this test controls, for addresses it made.
        resolve: async (name) => {
          const found = names[name];
          if (!found) throw Object.assign(new Error(`${name} not found`), { code: "ENOTFOUND" });
          return found;
        },
      },
    });
    assert.equal(t.daemon.services.egress.status.remote?.gateway, gateway);
    const added = await t.operator.post("/hosts", { name: remote.name, url: remote.url, address: remote.address, capacity: 4 });
    assert.equal(added.status, 201, JSON.stringify(added.body));
    assert.equal((await t.operator.post("/hosts/local/cordon")).status, 200);
    assert.equal((await t.operator.post("/users", { name: user })).status, 201);
    const generation = await t.operator.post<{ generation: { id: number } }>("/generations", { image });
    assert.equal(generation.status, 201, JSON.stringify(generation.body));
    const deployed = await t.operator.post("/deploy", { generation: generation.body.generation.id, users: [user] });
    assert.equal(deployed.status, 200, JSON.stringify(deployed.body));
    sandbox = (await t.daemon.services.manager.ensure(user, "dev")).endpoint;
    assert.equal(sandbox.host, remote.address, "the sandbox runs on the remote host");
  });

  after(async () => {
    if (t) {
      for (const role of ["live", "dev"] as const) await t.daemon.services.manager.stop(user, role).catch(() => undefined);
      await t.close().catch(() => undefined);
    }
    server?.kill("SIGKILL");
    // The namespace takes its rules, addresses and links with it; stopping first proves `stop` on a live host.
    await stopFirewall().catch(() => undefined);
    await remote.dispose();
    internet?.remove();
    await removePodmanFence(egressAddress());
    await podman("rmi", "-f", image).catch(() => undefined);
  });

  it("says who holds each host's sandboxes: the hypervisor its own, the host's firewall a remote one's", async () => {
    const hosts = (await t!.operator.get<{ hosts: { name: string; egress: unknown }[] }>("/hosts")).body.hosts;
    assert.deepEqual(Object.fromEntries(hosts.map((h) => [h.name, h.egress])), {
      local: { mode: "gateway", enforcedBy: "hypervisor" },
      [remote.name]: { mode: "gateway", enforcedBy: "host-firewall" },
    });
  });

  it("without the host's firewall, a remote sandbox connects directly to the internet, link-local and its host (the gap)", async () => {
    assert.deepEqual(await direct(), { internet: "connected", linkLocal: "connected", host: "connected" });
  });

  it("with the firewall in gateway mode, nothing direct gets out, and the gateway admits its token only", async () => {
    await startFirewall("gateway");
    // Twice: start is idempotent.
    await startFirewall("gateway");
    const attempts = await direct();
    for (const [where, result] of Object.entries(attempts)) assert.notEqual(result, "connected", `${where}: ${result}`);
    assert.notEqual((await tryFrom(sandbox, { kind: "udp", host: internet!.address, port: 53 })).result, "answered");
    // Through the gateway's listener for remote hosts, with its own token: allowed host, real TLS.
    const allowed = await tryFrom(sandbox, { kind: "https", url: `https://internet.test/`, ca: internet!.ca });
    assert.equal(allowed.status, 200, JSON.stringify(allowed));
    const refused = await tryFrom(sandbox, { kind: "connect", target: "elsewhere.test:443" });
    assert.equal(refused.status, 403, JSON.stringify(refused));
    const anonymous = await tryFrom(sandbox, { kind: "connect", target: "internet.test:443", token: null });
    assert.equal(anonymous.status, 407, JSON.stringify(anonymous));
  });

  it("the listener for remote hosts admits registered hosts' addresses only: its token from elsewhere gets nothing", async () => {
    const { token } = await tryFrom(sandbox, { kind: "token" });
    assert.match(token ?? "", /^hvegress_/);
    const [host, port] = [gateway.slice(0, gateway.lastIndexOf(":")), Number(gateway.slice(gateway.lastIndexOf(":") + 1))];
    const auth = Buffer.from(`sandbox:${token}`).toString("base64");
    const answer = await answerTo(host, port, `CONNECT internet.test:443 HTTP/1.1\r\nHost: internet.test:443\r\nProxy-Authorization: Basic ${auth}\r\n\r\n`);
    assert.equal(answer, "", "closed without an answer");
  });

  it("with the firewall in none mode, not even the gateway answers; stopped, the host is as before", async () => {
    await startFirewall("none");
    const [host, port] = [gateway.slice(0, gateway.lastIndexOf(":")), Number(gateway.slice(gateway.lastIndexOf(":") + 1))];
    assert.notEqual((await tryFrom(sandbox, { kind: "tcp", host, port })).result, "connected");
    assert.notEqual((await tryFrom(sandbox, { kind: "tcp", host: internet!.address, port: 80 })).result, "connected");
    await stopFirewall();
    const { stdout } = await inHost("iptables", "-w", "-t", "mangle", "-S");
    assert.doesNotMatch(stdout, /hypervisor-sandbox/);
    assert.equal((await tryFrom(sandbox, { kind: "tcp", host: internet!.address, port: 80 })).result, "connected");
  });
});

// The sandbox host's setup (DESIGN §8a) against the tools that read it: sshd takes the drop-in
// and restricts the hypervisor's account only, and the firewall rules, as the Debian script and
// the NixOS role write them, applied in a network namespace of their own, admit the hypervisor's
// address and no other to the published ports, through a DNAT as Podman's, while the host's own
// outgoing connections keep working.
import { after, describe, it, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runId } from "../helpers/run-id.js";
import { prepareSshdRuntimeDir } from "../helpers/sshd.js";
import { evalModule, repoRoot, requireTool, run } from "./host-tools.js";

const sshdDropIn = join(repoRoot, "deploy/sandbox-host/sshd-hypervisor.conf");
const firewallScript = join(repoRoot, "deploy/sandbox-host/firewall.sh");

/** sshd's effective settings for a connection of `user`, with the drop-in included first as Debian's sshd_config does. */
function sshdSettings(dir: string, user: string): Map<string, string> {
  const config = join(dir, "sshd_config");
  writeFileSync(config, `Include ${sshdDropIn}\nHostKey ${join(dir, "host_key")}\nPasswordAuthentication yes\n`);
  prepareSshdRuntimeDir();
  const result = run("/usr/sbin/sshd", ["-T", "-f", config, "-C", `user=${user},host=client,addr=10.0.0.1`]);
  assert.equal(result.status, 0, result.stderr);
  return new Map(result.stdout.split("\n").map((line) => [line.split(" ")[0]!, line.slice(line.indexOf(" ") + 1)]));
}

describe("sandbox host: sshd drop-in", () => {
  it("lets the hypervisor's account forward a unix socket with its key only, and leaves every other account as it was", (t) => {
    if (!requireTool(t, "ssh-keygen", "apt-get install openssh-server")) return;
    const dir = mkdtempSync(join(tmpdir(), "hv-sshd-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    assert.equal(run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(dir, "host_key")]).status, 0);
    const hypervisor = sshdSettings(dir, "hypervisor");
    assert.equal(hypervisor.get("authorizedkeysfile"), "/etc/hypervisor/authorized_keys");
    assert.equal(hypervisor.get("authenticationmethods"), "publickey");
    assert.equal(hypervisor.get("allowstreamlocalforwarding"), "local");
    for (const [setting, value] of [
      ["allowtcpforwarding", "no"],
      ["allowagentforwarding", "no"],
      ["x11forwarding", "no"],
      ["permittty", "no"],
      ["permitlisten", "none"],
      ["permitopen", "none"],
    ]) {
      assert.equal(hypervisor.get(setting), value, setting);
    }
    // The Match block ends with its file: the main config's settings after the include still apply.
    const other = sshdSettings(dir, "alice");
    assert.equal(other.get("permittty"), "yes");
    assert.equal(other.get("allowtcpforwarding"), "yes");
    assert.equal(other.get("passwordauthentication"), "yes");
  });
});

// Three namespaces: the sandbox host, the hypervisor and a stranger, each on its own link to the host.
const HOST_TO_HYPERVISOR = "10.201.1.1";
const HYPERVISOR = "10.201.1.2";
const HOST_TO_STRANGER = "10.201.2.1";
const STRANGER = "10.201.2.2";
/** Inside the kernel's default ip_local_port_range (32768-60999), where Podman publishes. */
const PUBLISHED = 40000;
/** Rewritten to the host's listener on DNAT_TARGET, as netavark rewrites a published port to its container. */
const PUBLISHED_DNAT = 41000;
const DNAT_TARGET = 9100;
const UNPUBLISHED = 9000;
const STRANGER_SERVICE = 9200;

const netns = (role: string) => `hvfw${runId.slice(1)}${role}`;
const children: ChildProcess[] = [];

function ip(...args: string[]): void {
  const result = run("ip", args);
  assert.equal(result.status, 0, `ip ${args.join(" ")}: ${result.stderr}`);
}

function inNetns(ns: string, command: string, args: string[], env: Record<string, string> = {}) {
  return run("nsenter", [`--net=/var/run/netns/${ns}`, command, ...args], repoRoot, env);
}

/** Listeners answering "ok" on each port, in the namespace, until the suite ends. */
async function listen(ns: string, ports: number[]): Promise<void> {
  const code = `const net = require("node:net"); let n = 0; for (const p of process.argv.slice(1)) net.createServer((s) => s.end("ok\\n")).listen(Number(p), "0.0.0.0", () => ++n === process.argv.length - 1 && console.log("up"));`;
  const child = spawn("nsenter", [`--net=/var/run/netns/${ns}`, process.execPath, "-e", code, ...ports.map(String)], { stdio: ["ignore", "pipe", "inherit"] });
  children.push(child);
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once("data", () => resolve());
    child.once("exit", (code) => reject(new Error(`listener in ${ns} exited with ${code}`)));
  });
}

/** What a new TCP connection from the namespace gets: "ok" (answered), "timeout" (dropped) or the error's code. */
function connect(ns: string, host: string, port: number): string {
  const code = `const s = require("node:net").connect({ host: process.argv[1], port: Number(process.argv[2]), timeout: 2000 });
    const done = (what) => { console.log(what); process.exit(0); };
    s.once("data", (d) => done(String(d).trim())); s.once("timeout", () => done("timeout")); s.once("error", (e) => done(e.code));`;
  const result = inNetns(ns, process.execPath, ["-e", code, host, String(port)]);
  assert.equal(result.status, 0, result.stderr);
  return result.stdout.trim();
}

function setUpNamespaces(t: TestContext): boolean {
  if (!requireTool(t, "ip", "apt-get install iproute2") || !requireTool(t, "iptables", "apt-get install iptables")) return false;
  if (process.getuid?.() !== 0) {
    if (process.env.CI === "true") assert.fail("the firewall suite needs root (network namespaces); CI must run it");
    t.skip("needs root for network namespaces");
    return false;
  }
  const [host, hypervisor, stranger] = [netns("h"), netns("v"), netns("s")];
  for (const ns of [host, hypervisor, stranger]) ip("netns", "add", ns);
  const link = (peer: string, hostSide: string, peerSide: string, tag: string) => {
    ip("link", "add", `${tag}h`, "netns", host, "type", "veth", "peer", "name", `${tag}p`, "netns", peer);
    inNetns(host, "ip", ["addr", "add", `${hostSide}/24`, "dev", `${tag}h`]);
    inNetns(peer, "ip", ["addr", "add", `${peerSide}/24`, "dev", `${tag}p`]);
    for (const [ns, dev] of [
      [host, `${tag}h`],
      [peer, `${tag}p`],
      [host, "lo"],
      [peer, "lo"],
    ] as const) {
      assert.equal(inNetns(ns, "ip", ["link", "set", dev, "up"]).status, 0);
    }
  };
  link(hypervisor, HOST_TO_HYPERVISOR, HYPERVISOR, `hv${runId.slice(1, 5)}v`);
  link(stranger, HOST_TO_STRANGER, STRANGER, `hv${runId.slice(1, 5)}s`);
  // Podman's DNAT of a published port, in the small.
  const dnat = inNetns(host, "iptables", [
    "-w",
    "-t",
    "nat",
    "-A",
    "PREROUTING",
    "-p",
    "tcp",
    "--dport",
    String(PUBLISHED_DNAT),
    "-j",
    "REDIRECT",
    "--to-ports",
    String(DNAT_TARGET),
  ]);
  assert.equal(dnat.status, 0, dnat.stderr);
  return true;
}

after(() => {
  for (const child of children) child.kill("SIGKILL");
  for (const role of ["h", "v", "s"]) run("ip", ["netns", "del", netns(role)]);
});

/** Reachability of the host's ports from the hypervisor and the stranger, and of the stranger's service from the host. */
function reachability() {
  const host = netns("h");
  return {
    hypervisorPublished: connect(netns("v"), HOST_TO_HYPERVISOR, PUBLISHED),
    hypervisorDnat: connect(netns("v"), HOST_TO_HYPERVISOR, PUBLISHED_DNAT),
    strangerPublished: connect(netns("s"), HOST_TO_STRANGER, PUBLISHED),
    strangerDnat: connect(netns("s"), HOST_TO_STRANGER, PUBLISHED_DNAT),
    strangerUnpublished: connect(netns("s"), HOST_TO_STRANGER, UNPUBLISHED),
    // The reply comes back to a local port in the published range: it must pass.
    hostOutgoing: connect(host, STRANGER, STRANGER_SERVICE),
  };
}

const open = { hypervisorPublished: "ok", hypervisorDnat: "ok", strangerPublished: "ok", strangerDnat: "ok", strangerUnpublished: "ok", hostOutgoing: "ok" };
const guarded = { ...open, strangerPublished: "timeout", strangerDnat: "timeout" };

describe("sandbox host: firewall, applied in network namespaces", () => {
  let ready: boolean | undefined;
  const prepare = async (t: TestContext): Promise<boolean> => {
    if (ready === undefined) {
      ready = setUpNamespaces(t);
      if (ready) {
        await listen(netns("h"), [PUBLISHED, DNAT_TARGET, UNPUBLISHED]);
        await listen(netns("s"), [STRANGER_SERVICE]);
      } else return false;
    } else if (!ready) t.skip("see the first test");
    return ready;
  };

  it("admits only the hypervisor's address to the published ports with the Debian script, and opens them again on stop", async (t) => {
    if (!(await prepare(t))) return;
    assert.deepEqual(reachability(), open, "nothing is filtered before the rules");
    const start = inNetns(netns("h"), "sh", [firewallScript, "start"], { HYPERVISOR_ADDRESS: HYPERVISOR });
    assert.equal(start.status, 0, start.stderr);
    // Twice is the same as once: the unit re-applies it on every nftables reload.
    assert.equal(inNetns(netns("h"), "sh", [firewallScript, "start"], { HYPERVISOR_ADDRESS: HYPERVISOR }).status, 0);
    assert.deepEqual(reachability(), guarded);
    assert.equal(inNetns(netns("h"), "sh", [firewallScript, "stop"]).status, 0);
    assert.deepEqual(reachability(), open);
  });

  it("refuses to start without the hypervisor's address or with a malformed port range", async (t) => {
    if (!(await prepare(t))) return;
    const missing = inNetns(netns("h"), "sh", [firewallScript, "start"]);
    assert.notEqual(missing.status, 0);
    assert.match(missing.stderr, /HYPERVISOR_ADDRESS/);
    const range = inNetns(netns("h"), "sh", [firewallScript, "start"], { HYPERVISOR_ADDRESS: HYPERVISOR, PUBLISHED_PORTS: "40000-41000" });
    assert.equal(range.status, 2);
    assert.match(range.stderr, /PUBLISHED_PORTS must be from:to/);
    assert.deepEqual(reachability(), open, "a refused start leaves nothing behind");
  });

  it("does the same with the rules the NixOS sandbox-host role writes", async (t) => {
    if (!(await prepare(t)) || !requireTool(t, "nix-instantiate", "apt-get install nix-bin")) return;
    const [evaluation] = evalModule([
      { settings: { sandboxHost: { enable: true, hypervisorAddress: HYPERVISOR, transport: "tcp", apiListen: `${HOST_TO_HYPERVISOR}:8888` } } },
    ]);
    const firewall = (evaluation!.config as Record<string, any>).networking.firewall as { extraCommands: string; extraStopCommands: string };
    // The chains of NixOS's own firewall, which the role's rule for the API port joins.
    for (const chain of ["nixos-fw", "nixos-fw-accept"]) assert.equal(inNetns(netns("h"), "iptables", ["-w", "-N", chain]).status, 0);
    const start = inNetns(netns("h"), "sh", ["-ec", firewall.extraCommands]);
    assert.equal(start.status, 0, start.stderr);
    assert.deepEqual(reachability(), guarded);
    assert.equal(inNetns(netns("h"), "sh", ["-ec", firewall.extraStopCommands]).status, 0);
    assert.deepEqual(reachability(), open);
  });
});

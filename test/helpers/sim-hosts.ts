import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { LABELS } from "../../hypervisor/runtime/container-runtime.js";
import { podmanEnv } from "./podman.js";
import { freePort } from "./ports.js";
import { runId } from "./run-id.js";
import { prepareSshdRuntimeDir } from "./sshd.js";

const run = promisify(execFile);

/**
 * A simulated Podman host (DESIGN §9): its own store, run root and network config, served by its
 * own `podman system service`, in a network namespace of its own however it is reached. What it runs
 * is invisible to every other store, so counting with its own podman is an independent witness.
 */
export class SimHost {
  readonly dir = mkdtempSync(join(tmpdir(), "hv-simhost-"));
  url = "";
  address = "127.0.0.1";
  private service: ChildProcess | undefined;
  private sshd: ChildProcess | undefined;
  private netns: string | undefined;
  private veth: string | undefined;
  private outsider: string | undefined;
  private tag = "";
  private subnet = "";

  constructor(readonly name: string) {}

  private get storeArgs(): string[] {
    return [
      "--root",
      join(this.dir, "root"),
      "--runroot",
      join(this.dir, "run"),
      "--tmpdir",
      join(this.dir, "tmp"),
      "--network-config-dir",
      join(this.dir, "networks"),
    ];
  }

  /** The podman CLI on this host's store. */
  async podman(...args: string[]): Promise<string> {
    const { stdout } = await run("podman", [...this.storeArgs, ...args], { env: podmanEnv(), maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  }

  /** Managed containers on this host, by user label. */
  async containers(prefix: string): Promise<{ user: string; slot: string; running: boolean }[]> {
    const rows = JSON.parse((await this.podman("ps", "-a", "--filter", `label=${LABELS.managed}=true`, "--format", "json")) || "[]") as {
      Labels: Record<string, string>;
      State: string;
    }[];
    return rows
      .filter((r) => r.Labels[LABELS.user]?.startsWith(prefix))
      .map((r) => ({ user: r.Labels[LABELS.user]!, slot: r.Labels[LABELS.slot]!, running: r.State === "running" }));
  }

  async volumes(prefix: string): Promise<string[]> {
    const rows = JSON.parse((await this.podman("volume", "ls", "--format", "json")) || "[]") as { Name: string }[];
    return rows.map((r) => r.Name).filter((n) => n.startsWith(`hv-${prefix}`));
  }

  async images(): Promise<string[]> {
    return (await this.podman("images", "-q", "--no-trunc")).split("\n").filter(Boolean);
  }

  /**
   * Served on a unix socket, from a network namespace of its own (see `joinNetns`): a Podman of
   * another store in the test's own namespace would pick the same bridge and subnet as the
   * default store's (each counts only its own networks), and the two hosts' sandboxes would
   * answer for each other.
   */
  async startUnix(index: number): Promise<void> {
    const socket = join(this.dir, "podman.sock");
    await this.joinNetns(index);
    this.url = `unix://${socket}`;
    this.service = this.serveInNetns(this.url);
    await this.waitUp(() => pingHttp({ socketPath: socket }));
  }

  /**
   * Served over tcp from a network namespace of its own, joined to this one by a veth pair on
   * addresses the test picks; `cut()` takes the link down.
   */
  async startNetns(index: number): Promise<void> {
    await this.joinNetns(index);
    this.url = `tcp://${this.address}:8888`;
    this.service = this.serveInNetns(this.url);
    await this.waitUp(() => pingHttp({ host: this.address, port: 8888 }));
  }

  /** A namespace of this host's own, a veth pair to the test's namespace, and addresses on both ends. */
  private async joinNetns(index: number): Promise<void> {
    // Named after this run, not the process id: a namespace left by a killed run of an earlier
    // boot, whose pids repeat, must not make `ip netns add` fail here.
    const tag = `${runId.slice(1, 5)}${index}`;
    this.tag = tag;
    this.netns = `hvsim${tag}`;
    this.veth = `hvo${tag}`;
    const peer = `hvi${tag}`;
    const subnet = `10.${200 + (Number.parseInt(runId.slice(1), 16) % 50)}.${index}`;
    this.subnet = subnet;
    this.address = `${subnet}.2`;
    await run("ip", ["netns", "add", this.netns]);
    await run("ip", ["link", "add", this.veth, "type", "veth", "peer", "name", peer]);
    await run("ip", ["link", "set", peer, "netns", this.netns]);
    await run("ip", ["addr", "add", `${subnet}.1/24`, "dev", this.veth]);
    await run("ip", ["link", "set", this.veth, "up"]);
    const inNs = (...args: string[]) => run("nsenter", [`--net=/var/run/netns/${this.netns}`, ...args]);
    await inNs("ip", "addr", "add", `${this.address}/24`, "dev", peer);
    await inNs("ip", "link", "set", peer, "up");
    await inNs("ip", "link", "set", "lo", "up");
  }

  /** This host's `podman system service` on `url`, inside its namespace. */
  private serveInNetns(url: string): ChildProcess {
    // nsenter --net, not ip netns exec: the latter remounts /sys and runc then finds no cgroups.
    return spawn("nsenter", [`--net=/var/run/netns/${this.netns!}`, "podman", ...this.storeArgs, "system", "service", "--time=0", url], {
      env: podmanEnv(),
      stdio: "ignore",
    });
  }

  /**
   * Served on a unix socket (from its namespace, as `startUnix`) that only a real sshd on a
   * loopback port leads to: the hypervisor reaches it as ssh://root@127.0.0.1:PORT/path, with a
   * key and a known_hosts made for this run, and its sandboxes at `address`.
   */
  async startSsh(index: number): Promise<{ keyFile: string; knownHostsFile: string }> {
    await this.startUnix(index);
    const socket = join(this.dir, "podman.sock");
    const ssh = join(this.dir, "ssh");
    mkdirSync(ssh, { mode: 0o700 });
    await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(ssh, "host_key")]);
    await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(ssh, "client_key")]);
    writeFileSync(join(ssh, "authorized_keys"), readFileSync(join(ssh, "client_key.pub")), { mode: 0o600 });
    const port = await freePort();
    writeFileSync(
      join(ssh, "sshd_config"),
      [
        `Port ${port}`,
        "ListenAddress 127.0.0.1",
        `HostKey ${join(ssh, "host_key")}`,
        `PidFile ${join(ssh, "sshd.pid")}`,
        `AuthorizedKeysFile ${join(ssh, "authorized_keys")}`,
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "StrictModes no",
        "UsePAM no",
        "AllowStreamLocalForwarding yes",
        "",
      ].join("\n"),
    );
    prepareSshdRuntimeDir();
    this.sshd = spawn("/usr/sbin/sshd", ["-D", "-e", "-f", join(ssh, "sshd_config")], { stdio: "ignore" });
    await this.waitUp(
      () =>
        new Promise<boolean>((resolve) => {
          const s = connect(port, "127.0.0.1", () => {
            s.destroy();
            resolve(true);
          });
          s.on("error", () => resolve(false));
        }),
    );
    const knownHostsFile = join(ssh, "known_hosts");
    const [type, key] = readFileSync(join(ssh, "host_key.pub"), "utf8").trim().split(/\s+/);
    writeFileSync(knownHostsFile, `[127.0.0.1]:${port} ${type} ${key}\n`);
    this.url = `ssh://root@127.0.0.1:${port}${socket}`;
    return { keyFile: join(ssh, "client_key"), knownHostsFile };
  }

  /** Everything of a user's on this host, helpers included (they carry the user label too). */
  async leftovers(user: string): Promise<{ containers: string[]; volumes: string[]; networks: string[] }> {
    const containers = JSON.parse((await this.podman("ps", "-a", "--filter", `label=${LABELS.user}=${user}`, "--format", "json")) || "[]") as {
      Names: string[];
    }[];
    const networks = JSON.parse((await this.podman("network", "ls", "--format", "json")) || "[]") as { name?: string; Name?: string }[];
    return {
      containers: containers.map((c) => c.Names[0] ?? "?"),
      volumes: await this.volumes(user),
      networks: networks.map((n) => n.name ?? n.Name ?? "").filter((n) => n.startsWith(`hv-${user}`)),
    };
  }

  /** This host's network namespace, for `nsenter --net=` (its firewall, its servers, its links). */
  get netnsPath(): string {
    if (!this.netns) throw new Error(`host ${this.name} has no namespace of its own`);
    return `/var/run/netns/${this.netns}`;
  }

  /** The address the hypervisor (this test's own namespace) has on this host's link. */
  get hypervisorAddress(): string {
    if (!this.subnet) throw new Error(`host ${this.name} has no namespace of its own`);
    return `${this.subnet}.1`;
  }

  /**
   * The sandbox-host firewall (the NixOS module's sandbox-host role, the runbook's Debian stage):
   * new connections to this host's own addresses on the published port range are dropped unless
   * they come from `admit`. In mangle PREROUTING, because Podman's DNAT sends published ports to
   * the container before the INPUT chain would ever see them.
   */
  async applyFirewall(admit: string, ports = "32768:60999"): Promise<void> {
    const match = ["-p", "tcp", "--dport", ports, "-m", "addrtype", "--dst-type", "LOCAL", "-m", "conntrack", "--ctstate", "NEW"];
    const ipt = (...args: string[]) => run("nsenter", [`--net=/var/run/netns/${this.netns!}`, "iptables", "-w", "-t", "mangle", ...args]);
    await ipt("-N", "hypervisor-sandbox-host");
    await ipt("-A", "hypervisor-sandbox-host", ...match, "-s", admit, "-j", "RETURN");
    await ipt("-A", "hypervisor-sandbox-host", ...match, "-j", "DROP");
    await ipt("-I", "PREROUTING", "-j", "hypervisor-sandbox-host");
  }

  /**
   * A fourth namespace that is not the hypervisor: a machine on the same network as this host
   * (a veth straight into the host's namespace) with a route to the host's address.
   */
  async startOutsider(): Promise<void> {
    if (!this.netns) throw new Error(`host ${this.name} has no namespace of its own`);
    this.outsider = `hvx${this.tag}`;
    const [mine, theirs] = [`hvxh${this.tag}`, `hvxo${this.tag}`];
    const subnet = this.subnet.replace(/\.(\d+)$/, (_, i: string) => `.${100 + Number(i)}`);
    const inHost = (...args: string[]) => run("nsenter", [`--net=/var/run/netns/${this.netns!}`, ...args]);
    const inOutsider = (...args: string[]) => run("nsenter", [`--net=/var/run/netns/${this.outsider!}`, ...args]);
    await run("ip", ["netns", "add", this.outsider]);
    await run("ip", ["link", "add", mine, "netns", this.netns, "type", "veth", "peer", "name", theirs, "netns", this.outsider]);
    await inHost("ip", "addr", "add", `${subnet}.1/24`, "dev", mine);
    await inHost("ip", "link", "set", mine, "up");
    await inOutsider("ip", "addr", "add", `${subnet}.2/24`, "dev", theirs);
    await inOutsider("ip", "link", "set", theirs, "up");
    await inOutsider("ip", "route", "add", `${this.address}/32`, "via", `${subnet}.1`);
  }

  /** An HTTP GET on a new connection from the outsider's namespace (or this one): the status, or undefined when nothing answered. */
  async probe(url: string, from: "outsider" | "hypervisor"): Promise<number | undefined> {
    const curl = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", url];
    const argv = from === "outsider" ? ["nsenter", `--net=/var/run/netns/${this.outsider!}`, ...curl] : curl;
    const status = await run(argv[0]!, argv.slice(1)).then(
      ({ stdout }) => Number(stdout),
      () => undefined,
    );
    return status || undefined;
  }

  /**
   * Drops every packet to this host's Podman API (over tcp, from its namespace's INPUT chain): the
   * API stops answering while the published ports, DNATed to the containers, still do.
   */
  async blockApi(): Promise<void> {
    await this.apiRule("-I");
  }

  async unblockApi(): Promise<void> {
    await this.apiRule("-D");
  }

  private async apiRule(op: "-I" | "-D"): Promise<void> {
    const port = new URL(this.url).port;
    await run("nsenter", [`--net=/var/run/netns/${this.netns!}`, "iptables", "-w", op, "INPUT", "-p", "tcp", "--dport", port, "-j", "DROP"]);
  }

  /** Takes the namespace's link down: the host stops answering, its processes keep running. */
  async cut(): Promise<void> {
    await run("ip", ["link", "set", this.veth!, "down"]);
  }

  async restore(): Promise<void> {
    await run("ip", ["link", "set", this.veth!, "up"]);
  }

  async dispose(): Promise<void> {
    if (this.veth) await this.restore().catch(() => undefined);
    await this.podman("rm", "-af", "-t", "0").catch(() => undefined);
    await this.podman("volume", "prune", "-f").catch(() => undefined);
    for (const child of [this.sshd, this.service]) {
      if (!child || child.exitCode !== null) continue;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await Promise.race([exited, sleep(5000).then(() => child.kill("SIGKILL"))]);
    }
    await this.podman("system", "reset", "-f").catch(() => undefined);
    if (this.outsider) await run("ip", ["netns", "del", this.outsider]).catch(() => undefined);
    if (this.netns) await run("ip", ["netns", "del", this.netns]).catch(() => undefined);
    if (this.veth) await run("ip", ["link", "del", this.veth]).catch(() => undefined);
    rmSync(this.dir, { recursive: true, force: true });
  }

  private async waitUp(probe: () => Promise<boolean>): Promise<void> {
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      if (await probe()) return;
      if (this.service?.exitCode != null) throw new Error(`host ${this.name}: podman system service exited with ${this.service.exitCode}`);
      await sleep(100);
    }
    throw new Error(`host ${this.name} did not come up within 15 s`);
  }
}

function pingHttp(target: { socketPath: string } | { host: string; port: number }): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ ...target, path: "/_ping", timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on("error", () => resolve(false));
    req.on("timeout", () => req.destroy());
    req.end();
  });
}

import { execFile, spawn } from "node:child_process";
import { createHash, randomInt } from "node:crypto";
import { readdir } from "node:fs/promises";
import { networkInterfaces } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type { SandboxEgress } from "../container-runtime.js";
import { exists } from "./files.js";
import { NEVER_BLOCKS, PRIVATE_BLOCKS } from "../egress-blocks.js";

const run = promisify(execFile);

/**
 * The default block sandboxes' networks are cut from (HYPERVISOR_PROCESS_NETWORK): private
 * (RFC 1918), and clear of the blocks Podman (10.88/16), Docker (172.17/16), libvirt
 * (192.168.122/24) and Tailscale (100.64/10) take by default.
 */
export const DEFAULT_SANDBOX_NETWORK = "10.252.0.0/16";
/** The contract's port (DESIGN §3): every sandbox listens on it in its own namespace. */
export const SANDBOX_PORT = 8080;

/**
 * What a sandbox may send from its own namespace: anything on its loopback, and the replies on
 * connections made to its port (the proxy's, the health checks'): TCP from SANDBOX_PORT that
 * opens nothing (no bare SYN). Everything else, to the host or beyond, is refused at once. Without
 * raw sockets (no capabilities) a sandbox can send from that port only on a connection the host
 * opened, so no connection tracking is needed, nor paid for on every packet. The rules live in
 * the sandbox's namespace, which its uid cannot change, and go with it.
 */
const OUTPUT_RULES = outputRules([]);

/**
 * The IPv4 rules with egress (DESIGN §5b) between the replies and the refusal: `gateway`, one
 * TCP destination, the gateway's address and port; `open`, anywhere but the host's own addresses,
 * the sandboxes' block, the never-allowed blocks and private ones the allow list does not name;
 * `none`, nothing.
 */
function egressRules(egress: Pick<SandboxEgress, "mode" | "gateway" | "allowedBlocks"> | undefined, block: string): string[] {
  if (egress?.mode === "gateway") return [`-A OUTPUT -d ${egress.gateway.host}/32 -p tcp --dport ${egress.gateway.port} -j ACCEPT`];
  if (egress?.mode !== "open") return [];
  const own = Object.values(networkInterfaces())
    .flat()
    .filter((i) => i?.family === "IPv4")
    .map((i) => `${i!.address}/32`);
  const v4Allowed = egress.allowedBlocks.filter((b) => !b.includes(":"));
  return [
    ...[...own, block, egress.gateway.host + "/32"].map((d) => `-A OUTPUT -d ${d} -j REJECT`),
    ...NEVER_BLOCKS.ipv4.map((d) => `-A OUTPUT -d ${d} -j REJECT`),
    ...v4Allowed.map((d) => `-A OUTPUT -d ${d} -j ACCEPT`),
    ...PRIVATE_BLOCKS.ipv4.map((d) => `-A OUTPUT -d ${d} -j REJECT`),
    "-A OUTPUT -j ACCEPT",
  ];
}

function outputRules(egress: string[]): string {
  return [
    "*filter",
    ":INPUT ACCEPT [0:0]",
    ":FORWARD DROP [0:0]",
    ":OUTPUT DROP [0:0]",
    "-A OUTPUT -o lo -j ACCEPT",
    `-A OUTPUT -p tcp --sport ${SANDBOX_PORT} ! --syn -j ACCEPT`,
    ...egress,
    "-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset",
    "-A OUTPUT -j REJECT",
    "COMMIT",
    "",
  ].join("\n");
}

/** Where `ip netns add` pins named network namespaces. */
const NETNS_DIR = "/run/netns";
/**
 * Host ends of sandbox links: `hvsb` and the link's index in four hex digits. A link name is
 * unique on the host, so creating it is the machine-wide claim of that index and its addresses,
 * whichever daemon (state dir) asks.
 */
const LINK_PREFIX = "hvsb";
/** Each sandbox gets a /31 (RFC 3021) of the range: the host's end, then the sandbox's. */
const PREFIX_LENGTH = 31;
/** Four hex digits of link index. */
const MAX_LINKS = 0x1_0000;

/** A sandbox's network: its namespace, the host's end of its link, and the address it alone has. */
export interface SandboxNet {
  netns: string;
  link: string;
  address: string;
}

/**
 * One network namespace per sandbox (DESIGN §5a), joined to the host by a veth pair whose
 * addresses, a /31 of the configured range, only it and the host have. The host reaches the
 * sandbox at its address; the sandbox reaches nothing but its own loopback and the replies to
 * those connections: not the host's addresses, listeners, `/proc/net` or abstract unix sockets
 * (all per namespace), nor any other sandbox. Its port is its own: another sandbox can neither
 * hold its address nor receive what the host routes there.
 *
 * Namespaces are named `hvsb-<hash of the records dir>-<user>-<slot>`, so daemons of different
 * state dirs on one machine never touch each other's, and a daemon finds its own after a crash.
 */
export class SandboxNetworks {
  private readonly block: string;
  private readonly base: number;
  private readonly links: number;
  private readonly prefix: string;
  private readonly ipv6 = exists("/proc/net/if_inet6");

  /**
   * `range`: an IPv4 CIDR block of /16 to /30 (checked by the config). `egress`: what sandboxes
   * may reach beyond their own port (DESIGN §5b); absent, nothing.
   */
  constructor(
    range: string,
    recordsDir: string,
    private readonly egress?: Pick<SandboxEgress, "mode" | "gateway" | "allowedBlocks">,
  ) {
    const [address, bits] = range.split("/");
    const length = Number(bits);
    this.block = range;
    this.base = (ipToNumber(address!) & ~((2 ** (32 - length) - 1) >>> 0)) >>> 0;
    this.links = Math.min(MAX_LINKS, 2 ** (31 - length));
    this.prefix = `hvsb-${createHash("sha256").update(recordsDir).digest("hex").slice(0, 8)}-`;
  }

  /** The namespace of the sandbox named `sandbox` (`<user>-<slot>`). */
  nameOf(sandbox: string): string {
    return `${this.prefix}${sandbox}`;
  }

  /** For `nsenter --net=`. */
  path(netns: string): string {
    return join(NETNS_DIR, netns);
  }

  /**
   * Whether this host can give sandboxes networks of their own: a namespace with the rules
   * above, made and removed. Returns why not, if so. Then the whole block is made unreachable
   * from the host but through sandboxes' links (whose /31 routes are more specific): a request
   * to a sandbox whose link is gone fails at once instead of leaving by the default route for
   * whatever machine holds that address elsewhere. The route stays, as the sandboxes do, and
   * serves every daemon on the block.
   */
  async probe(): Promise<string | undefined> {
    if (process.getuid?.() !== 0) return "the daemon is not root: sandboxes share the host's network, without a namespace of their own";
    const netns = this.nameOf("probe");
    try {
      await this.remove(netns);
      await run("ip", ["netns", "add", netns]);
      await this.fence(netns);
      await run("ip", ["route", "add", "unreachable", this.block]).catch((err: { stderr?: string }) => {
        if (!/exists/i.test(err.stderr ?? "")) throw err;
      });
      return undefined;
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      return `cannot give sandboxes networks of their own (ip, nsenter, iptables): ${(e.stderr || e.message).trim()}`;
    } finally {
      await this.remove(netns).catch(() => undefined);
    }
  }

  /** A fresh network for the sandbox, replacing any left from before. */
  async create(sandbox: string): Promise<SandboxNet> {
    const netns = this.nameOf(sandbox);
    await this.remove(netns);
    await run("ip", ["netns", "add", netns]);
    try {
      // The rules need only the namespace: they are written while the link is made.
      const [net] = await Promise.all([this.link(netns), this.fence(netns)]);
      return net;
    } catch (err) {
      await this.remove(netns).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Removes a sandbox's namespace; its link goes with it (the namespace's end of the pair is
   * destroyed, and with it the host's). Removing one that is gone is a no-op.
   */
  async remove(netns: string): Promise<void> {
    if (!exists(this.path(netns))) return;
    await run("ip", ["netns", "delete", netns]);
  }

  /** After a crash: every namespace of this daemon's that no running sandbox uses is removed. */
  async sweep(inUse: (netns: string) => Promise<boolean>): Promise<void> {
    const names = await readdir(NETNS_DIR).catch(() => [] as string[]);
    for (const netns of names.filter((n) => n.startsWith(this.prefix))) {
      if (!(await inUse(netns))) await this.remove(netns);
    }
  }

  /** The namespace's link to the host, both ends addressed and up. */
  private async link(netns: string): Promise<SandboxNet> {
    const index = await this.claimLink(netns);
    const link = linkName(index);
    const host = numberToIp(this.base + 2 * index);
    const address = numberToIp(this.base + 2 * index + 1);
    await Promise.all([
      batch(["ip", "-batch", "-"], [`link set ${link} addrgenmode none`, `address add ${host}/${PREFIX_LENGTH} dev ${link}`, `link set ${link} up`]),
      batch(
        ["ip", "-n", netns, "-batch", "-"],
        ["link set eth0 addrgenmode none", `address add ${address}/${PREFIX_LENGTH} dev eth0`, "link set eth0 up", "link set lo up", ...this.routes(host)],
      ),
    ]);
    return { netns, link, address };
  }

  /**
   * Claims a free link index, starting at a random one so that an address just given up is
   * seldom the next one handed out. The namespace's end is made inside it as `eth0`.
   */
  private async claimLink(netns: string): Promise<number> {
    const start = randomInt(this.links);
    for (let i = 0; i < this.links; i++) {
      const index = (start + i) % this.links;
      try {
        await run("ip", ["link", "add", linkName(index), "type", "veth", "peer", "name", "eth0", "netns", netns]);
        return index;
      } catch (err) {
        if (!/exists/i.test((err as { stderr?: string }).stderr ?? "")) throw err;
      }
    }
    throw new Error(`all ${this.links} sandbox links are in use`);
  }

  /** Out of the namespace, through the host's end: to the gateway alone, or (`open`) by default. */
  private routes(host: string): string[] {
    if (this.egress?.mode === "gateway") return [`route add ${this.egress.gateway.host}/32 via ${host} dev eth0`];
    if (this.egress?.mode === "open") return [`route add default via ${host} dev eth0`];
    return [];
  }

  /** The namespace's rules, IPv4 and (where the kernel has it) IPv6 (no egress over IPv6: nothing routes it). */
  private async fence(netns: string): Promise<void> {
    const rules = [outputRules(egressRules(this.egress, this.block)), OUTPUT_RULES];
    const tools = this.ipv6 ? ["iptables-restore", "ip6tables-restore"] : ["iptables-restore"];
    await Promise.all(tools.map((tool, i) => batch(["nsenter", `--net=${this.path(netns)}`, "--", tool, "-w"], [rules[i]!])));
  }
}

function linkName(index: number): string {
  return `${LINK_PREFIX}${index.toString(16).padStart(4, "0")}`;
}

function ipToNumber(address: string): number {
  return address.split(".").reduce((n, octet) => n * 256 + Number(octet), 0);
}

function numberToIp(n: number): string {
  return [24, 16, 8, 0].map((shift) => (n >>> shift) & 255).join(".");
}

/** Runs `argv` with `lines` on its stdin; rejects with its stderr. */
function batch(argv: string[], lines: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ["pipe", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.once("error", reject);
    child.once("close", (code) =>
      code === 0 ? resolve() : reject(Object.assign(new Error(`${argv.join(" ")} exited with ${code}: ${stderr.trim()}`), { stderr })),
    );
    child.stdin.end(lines.join("\n") + "\n");
  });
}

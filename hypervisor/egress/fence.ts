import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { ambientCapabilities } from "../capabilities.js";

const run = promisify(execFile);

/** Why egress cannot be enforced by this process, or undefined when it can. */
export function cannotFence(): string | undefined {
  return hasNetAdmin() ? undefined : "the daemon has no CAP_NET_ADMIN (neither root nor granted it): egress cannot be enforced by the kernel";
}

/**
 * Whether this process may change the host's links and firewall through `ip` and `iptables`:
 * root, or a service granted CAP_NET_ADMIN as an ambient capability (the units'
 * AmbientCapabilities=), the set those programs inherit when exec'd.
 */
function hasNetAdmin(): boolean {
  const CAP_NET_ADMIN = 12n;
  return process.getuid?.() === 0 || ((ambientCapabilities() >> CAP_NET_ADMIN) & 1n) === 1n;
}

/** Host ends of process sandboxes' links (runtime/process/netns.ts) and Podman's bridges: CNI's (Podman 4), netavark's (Podman 5). */
const SANDBOX_INTERFACES = ["hvsb+", "cni-podman+", "podman+"];

/**
 * The host's half of egress enforcement (DESIGN §5b). The gateway listens on an address of its
 * own, on a link of its own, so it is not on any of the host's public addresses; the host's INPUT
 * accepts connections to it only from sandbox interfaces (and the host itself), to its port only.
 * In `open` mode the host also forwards and masquerades the sandboxes' block; what each sandbox
 * may reach is then decided by the rules in its own namespace (runtime/process/netns.ts), which
 * its uid cannot change.
 *
 * Everything is named after the gateway's address, so daemons on other addresses (tests) never
 * touch each other's, and removed by `down()`.
 */
export class EgressFence {
  private readonly tag: string;
  readonly dummy: string;
  private chain: string;
  private forward: string;

  constructor(
    private readonly mode: "gateway" | "none" | "open",
    private readonly host: string,
    private readonly sandboxBlock: string,
  ) {
    this.tag = createHash("sha256").update(host).digest("hex").slice(0, 8);
    this.dummy = `hveg${this.tag}`;
    this.chain = `HVEG${this.tag}`;
    this.forward = `HVEG${this.tag}F`;
  }

  /** Where the gateway can listen: its address on its own link. Returns why not, if it cannot. */
  async address(): Promise<string | undefined> {
    const cannot = cannotFence();
    if (cannot) return cannot;
    try {
      // A veth pair with both ends on the host: a link of its own that needs no kernel module
      // beyond what sandboxes' links already use (a dummy interface may not be built in).
      await run("ip", ["link", "add", this.dummy, "type", "veth", "peer", "name", `${this.dummy}p`]).catch((err: { stderr?: string }) => {
        if (!/exists/i.test(err.stderr ?? "")) throw err;
      });
      await run("ip", ["address", "replace", `${this.host}/32`, "dev", this.dummy]);
      await run("ip", ["link", "set", `${this.dummy}p`, "up"]);
      await run("ip", ["link", "set", this.dummy, "up"]);
      return undefined;
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      return `cannot give the egress gateway an address of its own (ip): ${(e.stderr || e.message).trim()}`;
    }
  }

  /** The host's rules, once the gateway listens on `port`. Returns why not, if they cannot be made. */
  async up(port: number): Promise<string | undefined> {
    // Per port: two daemons on one address (a restart's overlap, two tests) keep their own rules.
    this.chain = `HVEG${this.tag}${port.toString(16).padStart(4, "0")}`;
    this.forward = `${this.chain}F`;
    try {
      await this.removeRules();
      const lines = [
        "*filter",
        `:${this.chain} - [0:0]`,
        ...SANDBOX_INTERFACES.map((i) => `-A ${this.chain} -i ${i} -p tcp --dport ${port} -j ACCEPT`),
        `-A ${this.chain} -i lo -p tcp --dport ${port} -j ACCEPT`,
        `-A ${this.chain} -j DROP`,
        `-I INPUT 1 -d ${this.host}/32 -j ${this.chain}`,
      ];
      if (this.mode === "open") {
        lines.push(
          `:${this.forward} - [0:0]`,
          `-A ${this.forward} -i hvsb+ -s ${this.sandboxBlock} -j ACCEPT`,
          `-A ${this.forward} -o hvsb+ -d ${this.sandboxBlock} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`,
          `-I FORWARD 1 -j ${this.forward}`,
        );
      }
      lines.push("COMMIT");
      if (this.mode === "open") {
        lines.push(
          "*nat",
          `:${this.forward} - [0:0]`,
          `-A ${this.forward} -s ${this.sandboxBlock} ! -d ${this.sandboxBlock} -j MASQUERADE`,
          `-I POSTROUTING 1 -j ${this.forward}`,
          "COMMIT",
        );
        await enableForwarding();
      }
      await restore(lines);
      return undefined;
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      return `cannot fence sandboxes' egress (iptables): ${(e.stderr || e.message).trim()}`;
    }
  }

  /** Removes the rules, and the gateway's link unless another daemon's rules still use it; what is gone already is skipped. */
  async down(): Promise<void> {
    await this.removeRules();
    const input = await run("iptables", ["-w", "-S", "INPUT"]).then(
      (r) => r.stdout,
      () => "",
    );
    if (!input.includes(`HVEG${this.tag}`)) await run("ip", ["link", "del", this.dummy]).catch(() => undefined);
  }

  private async removeRules(): Promise<void> {
    const quiet = (args: string[]) => run("iptables", ["-w", ...args]).catch(() => undefined);
    for (let i = 0; i < 4; i++) await quiet(["-D", "INPUT", "-d", `${this.host}/32`, "-j", this.chain]);
    for (let i = 0; i < 4; i++) await quiet(["-D", "FORWARD", "-j", this.forward]);
    for (let i = 0; i < 4; i++) await quiet(["-t", "nat", "-D", "POSTROUTING", "-j", this.forward]);
    for (const [table, chain] of [
      ["filter", this.chain],
      ["filter", this.forward],
      ["nat", this.forward],
    ] as const) {
      await quiet(["-t", table, "-F", chain]);
      await quiet(["-t", table, "-X", chain]);
    }
  }
}

const IP_FORWARD = "/proc/sys/net/ipv4/ip_forward";

/**
 * `open` mode forwards the sandboxes' block. Written only when off: the units'
 * ProtectKernelTunables= makes /proc/sys read-only, and a Podman host has it on already.
 */
async function enableForwarding(): Promise<void> {
  if ((await readFile(IP_FORWARD, "utf8")).trim() === "1") return;
  await writeFile(IP_FORWARD, "1").catch((err: Error) => {
    throw new Error(`open egress needs net.ipv4.ip_forward=1 and the daemon cannot set it (${err.message}): set it in the host's sysctl`);
  });
}

function restore(lines: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = execFile("iptables-restore", ["-w", "--noflush"], (err, _stdout, stderr) =>
      err ? reject(Object.assign(new Error(err.message), { stderr })) : resolve(),
    );
    child.stdin!.end(lines.join("\n") + "\n");
  });
}

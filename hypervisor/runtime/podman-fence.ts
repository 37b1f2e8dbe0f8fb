import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { networkInterfaces } from "node:os";
import { promisify } from "node:util";
import type { SandboxEgress } from "./container-runtime.js";
import { NEVER_BLOCKS, PRIVATE_BLOCKS } from "./egress-blocks.js";

const run = promisify(execFile);

/**
 * DESIGN §5b on Podman: each sandbox's network (one per sandbox, `isolate`) is held by the host's
 * kernel to the egress mode, in two chains of the hypervisor's own, jumped to first from INPUT and
 * FORWARD. Per sandbox subnet, INPUT takes from it only replies on connections the host opened
 * (the proxy's, to the published port) and, in `gateway` mode, TCP to the gateway's address (no
 * DNS, no host listener); FORWARD drops all of it (`gateway`, `none`) or, `open`, what goes to
 * link-local, other sandboxes and private ranges not allowed. Rules are added when the network is
 * made, before any container runs on it, and outlive the daemon, as the containers do.
 *
 * Chains are named after the gateway's address, so that daemons of other addresses (tests) never
 * touch each other's. IPv4 only: the sandbox networks have no IPv6.
 */
export class PodmanFence {
  private readonly input: string;
  private readonly forward: string;
  private ready: Promise<void> | undefined;

  constructor(private readonly egress: Pick<SandboxEgress, "mode" | "gateway" | "allowedBlocks">) {
    const tag = fenceTag(egress.gateway.host);
    this.input = `HVEGP${tag}I`;
    this.forward = `HVEGP${tag}F`;
  }

  /**
   * Fences a sandbox network's subnet (at each create, before a container runs on it). A subnet
   * belongs to one live network only, so every rule for it already there is stale: another
   * daemon's, or of a network removed behind the hypervisor's back (`podman network rm`) whose
   * subnet this one now has, or of the mode before the operator changed it. A stale DROP would
   * hold this network to a mode that is not its own: all go, then its own are added, in order.
   */
  async allow(subnet: string): Promise<void> {
    await (this.ready ??= this.chains());
    const { stdout } = await run("iptables", ["-w", "-S"]);
    for (const line of stdout.split("\n"))
      if (/^-A HVEGP\w+ /.test(line) && line.includes(` -s ${subnet} `)) await ipt(...line.replace(/^-A /, "-D ").split(" ")).catch(() => undefined);
    for (const [chain, rule] of this.rules(subnet)) await ipt("-A", chain, ...rule);
  }

  /** The network is gone: so are its rules. */
  async forget(subnet: string): Promise<void> {
    for (const [chain, rule] of this.rules(subnet)) await ipt("-D", chain, ...rule).catch(() => undefined);
  }

  private async chains(): Promise<void> {
    for (const [chain, parent] of [
      [this.input, "INPUT"],
      [this.forward, "FORWARD"],
    ] as const) {
      await ipt("-N", chain).catch(() => undefined);
      if (
        !(await ipt("-C", parent, "-j", chain).then(
          () => true,
          () => false,
        ))
      )
        await ipt("-I", parent, "1", "-j", chain);
    }
  }

  private rules(subnet: string): [string, string[]][] {
    const from = ["-s", subnet];
    const input: string[][] = [];
    if (this.egress.mode === "gateway") input.push([...from, "-d", `${this.egress.gateway.host}/32`, "-p", "tcp", "-j", "ACCEPT"]);
    input.push([...from, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"], [...from, "-j", "DROP"]);
    const forward: string[][] = [];
    if (this.egress.mode !== "open") forward.push([...from, "-j", "DROP"]);
    else {
      const own = Object.values(networkInterfaces())
        .flat()
        .filter((i) => i?.family === "IPv4")
        .map((i) => `${i!.address}/32`);
      forward.push(
        ...[...own, ...NEVER_BLOCKS.ipv4].map((d) => [...from, "-d", d, "-j", "DROP"]),
        [...from, "-o", "cni-podman+", "-j", "DROP"],
        [...from, "-o", "hvsb+", "-j", "DROP"],
        ...this.egress.allowedBlocks.filter((b) => !b.includes(":")).map((d) => [...from, "-d", d, "-j", "RETURN"]),
        ...PRIVATE_BLOCKS.ipv4.map((d) => [...from, "-d", d, "-j", "DROP"]),
      );
    }
    return [...input.map((r) => [this.input, r] as [string, string[]]), ...forward.map((r) => [this.forward, r] as [string, string[]])];
  }
}

export function fenceTag(gatewayHost: string): string {
  return createHash("sha256").update(gatewayHost).digest("hex").slice(0, 8);
}

/** Removes the chains of the gateway address `host` (tests, after their networks are gone). */
export async function removePodmanFence(host: string): Promise<void> {
  const tag = fenceTag(host);
  for (const [chain, parent] of [
    [`HVEGP${tag}I`, "INPUT"],
    [`HVEGP${tag}F`, "FORWARD"],
  ] as const) {
    for (let i = 0; i < 4; i++) await ipt("-D", parent, "-j", chain).catch(() => undefined);
    await ipt("-F", chain).catch(() => undefined);
    await ipt("-X", chain).catch(() => undefined);
  }
}

function ipt(...args: string[]): Promise<unknown> {
  return run("iptables", ["-w", ...args]);
}

import { isIP } from "node:net";
import { domainToASCII } from "node:url";
import { AddressSet } from "../../proxy/addresses.js";
import { NEVER_BLOCKS, PRIVATE_BLOCKS } from "../runtime/egress-blocks.js";

/**
 * Addresses no sandbox may ever reach, whatever the allow list says (DESIGN §5b): nowhere (0/8,
 * ::), loopback (the host itself), link-local (169.254/16 holds the cloud metadata service;
 * fe80::/10), multicast and the reserved 240/4, and the IPv6 forms that carry an IPv4 address
 * inside them (NAT64, 6to4, IPv4-compatible), whose IPv4 half could be any of these.
 */
const NEVER = AddressSet.parse(
  [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "::/96",
    "fe80::/10",
    "ff00::/8",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "2002::/16",
  ].join(","),
);

/** Addresses of private and special-use ranges: reachable only where an allow-list CIDR names them. */
const PRIVATE = AddressSet.parse([...PRIVATE_BLOCKS.ipv4, ...PRIVATE_BLOCKS.ipv6].join(","));

const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

/**
 * A host name as the gateway compares it: lower case, IDNA to its ASCII (punycode) form, one
 * trailing dot dropped. Undefined when it is no DNS name: empty, bad labels, or all digits and
 * dots/hex (`2852039166`, `0xa9.0xfe.0xa9.0xfe`, `0251.0376.0251.0376`), which the C resolver
 * would read as an IPv4 address in a form the allow list never compares (RFC 952 forbids a
 * numeric top label, so no real name is refused).
 */
export function normalizeHost(host: string): string | undefined {
  const bare = host.endsWith(".") ? host.slice(0, -1) : host;
  if (!bare || bare.length > 253) return undefined;
  const ascii = domainToASCII(bare.toLowerCase());
  if (!ascii) return undefined;
  const labels = ascii.split(".");
  if (!labels.every((l) => LABEL.test(l))) return undefined;
  if (/^(?:0x[0-9a-f]*|[0-9]+)$/.test(labels[labels.length - 1]!)) return undefined;
  return ascii;
}

/** Why an address may not be reached, or undefined when it may. */
export type AddressVerdict = "never" | "private" | undefined;

/**
 * HYPERVISOR_EGRESS_ALLOW (DESIGN §5b): which hosts the gateway may connect a sandbox to. Exact
 * names (`api.example.org`), `*.suffix` patterns (every name below `suffix`, not `suffix`
 * itself), and CIDR blocks: the explicit allowance a private range needs, and the only way an IP
 * address itself is allowed. A block that touches a never-allowed range is refused at start.
 */
export class EgressAllowList {
  static readonly empty = new EgressAllowList(new Set(), [], AddressSet.empty, []);

  private constructor(
    private readonly names: ReadonlySet<string>,
    private readonly suffixes: readonly string[],
    private readonly blocks: AddressSet,
    /** As written, for the start line and readyz. */
    readonly entries: readonly string[],
  ) {}

  /** Comma- or space-separated entries; throws an Error naming the bad one. */
  static parse(list: string): EgressAllowList {
    const names = new Set<string>();
    const suffixes: string[] = [];
    const blocks: string[] = [];
    const entries = list.split(/[\s,]+/).filter(Boolean);
    for (const entry of entries) {
      const slash = entry.indexOf("/");
      if (isIP(slash < 0 ? entry : entry.slice(0, slash))) {
        let block: AddressSet;
        try {
          block = AddressSet.parse(entry);
        } catch (err) {
          throw new Error((err as Error).message);
        }
        const base = slash < 0 ? entry : entry.slice(0, slash);
        // Overlap either way: the entry lies in a forbidden range, or holds one of their starts.
        const forbiddenStarts = [...NEVER_BLOCKS.ipv4, ...NEVER_BLOCKS.ipv6, "::ffff:0.0.0.0"].map((b) => b.split("/")[0]!);
        if (NEVER.has(base) || forbiddenStarts.some((start) => block.has(start))) {
          throw new Error(`${JSON.stringify(entry)} covers loopback, link-local, multicast or unspecified addresses, which are never allowed`);
        }
        blocks.push(entry);
        continue;
      }
      const wildcard = entry.startsWith("*.");
      const name = normalizeHost(wildcard ? entry.slice(2) : entry);
      if (!name || (wildcard && !name.includes("."))) {
        throw new Error(`${JSON.stringify(entry)} is not a host name, a *.suffix pattern under a domain, or a CIDR block`);
      }
      if (wildcard) suffixes.push(`.${name}`);
      else names.add(name);
    }
    return new EgressAllowList(names, suffixes, blocks.length ? AddressSet.parse(blocks.join(",")) : AddressSet.empty, entries);
  }

  get isEmpty(): boolean {
    return this.entries.length === 0;
  }

  /** Whether a sandbox may ask for `host` (a normalized name, see normalizeHost). */
  allowsName(host: string): boolean {
    return this.names.has(host) || this.suffixes.some((suffix) => host.endsWith(suffix));
  }

  /** Whether an IP literal is allowed as a destination: only inside an allowed block. */
  allowsLiteral(address: string): boolean {
    return this.blocks.has(address) && this.verdict(address) === undefined;
  }

  /**
   * Whether the gateway may connect to `address` (one a name resolved to, or a literal): never a
   * forbidden one; a private one only inside an allowed block.
   */
  verdict(address: string): AddressVerdict {
    // AddressSet reads an IPv4 address as its IPv4-mapped IPv6 form, so `::ffff:169.254.1.1`
    // and `::ffff:a9fe:101` fall in 169.254.0.0/16 like the address they carry.
    if (isIP(address) === 0 || NEVER.has(address)) return "never";
    if (PRIVATE.has(address)) return this.blocks.has(address) ? undefined : "private";
    return undefined;
  }

  /** The allowed CIDR blocks as written, for the kernel rules of `open` mode. */
  get cidrs(): string[] {
    return this.entries.filter((e) => isIP(e.split("/")[0]!) !== 0);
  }
}

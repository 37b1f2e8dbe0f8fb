import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { networkInterfaces } from "node:os";
import { AddressSet } from "../../proxy/addresses.js";
import { normalizeHost, type EgressAllowList } from "./allow-list.js";

/** Every address a name has; the gateway's own, so that tests can play DNS without touching the host's. */
export type Resolver = (host: string) => Promise<string[]>;

const RESOLVE_TIMEOUT_MS = 5000;

/** The C resolver, as every program on the host sees it (/etc/hosts, then DNS). */
export const systemResolver: Resolver = async (host) => (await lookup(host, { all: true, verbatim: true })).map((a) => a.address);

/** Addresses never connected to, whatever the allow list says: the host's own, and the registered sandbox hosts'. */
export interface Forbidden {
  has(address: string): boolean;
}

/** Where the gateway may connect, or why not (status and a short reason the sandbox can read). */
export type Destination = { address: string } | { status: 403 | 400 | 502 | 504; reason: string };

/** The host's own addresses, every interface: never a destination, whatever the allow list says. */
export function hostAddresses(extra: string[] = []): AddressSet {
  const own = Object.values(networkInterfaces())
    .flat()
    .filter((i) => i !== undefined)
    .map((i) => i.address.replace(/%.*$/, ""));
  return AddressSet.parse([...own, ...extra].join(","));
}

/**
 * Checks a sandbox's requested host the way DESIGN §5b asks: an IP literal only inside an allowed
 * block; a name only when allowed, and then resolved here and refused when any of its addresses
 * is forbidden (a name that answers a public address once and the metadata service the next time
 * never gets a connection, since the address connected to is the one checked). The kernel never
 * resolves for the gateway: `address` is what it connects to.
 */
export async function checkDestination(host: string, allow: EgressAllowList, resolve: Resolver, own: Forbidden): Promise<Destination> {
  const literal = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
  if (isIP(literal)) {
    if (allow.verdict(literal) === "never" || own.has(literal)) return { status: 403, reason: `${literal} is never reachable from a sandbox` };
    if (!allow.allowsLiteral(literal)) return { status: 403, reason: `${literal} is not in HYPERVISOR_EGRESS_ALLOW` };
    return { address: literal };
  }
  const name = normalizeHost(host);
  if (!name) return { status: 400, reason: `${JSON.stringify(host.slice(0, 100))} is not a host name` };
  if (!allow.allowsName(name)) return { status: 403, reason: `${name} is not in HYPERVISOR_EGRESS_ALLOW` };
  let addresses: string[];
  try {
    addresses = await withTimeout(resolve(name), RESOLVE_TIMEOUT_MS);
  } catch (err) {
    return (err as Error).message === "timeout"
      ? { status: 504, reason: `${name} did not resolve in time` }
      : { status: 502, reason: `${name} does not resolve` };
  }
  if (addresses.length === 0) return { status: 502, reason: `${name} does not resolve` };
  for (const address of addresses) {
    const verdict = allow.verdict(address);
    if (verdict === "never" || own.has(address)) return { status: 403, reason: `${name} resolves to an address never reachable from a sandbox` };
    if (verdict === "private") return { status: 403, reason: `${name} resolves to a private address not in HYPERVISOR_EGRESS_ALLOW` };
  }
  return { address: addresses[0]! };
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("timeout")), ms);
    }),
  ]);
}

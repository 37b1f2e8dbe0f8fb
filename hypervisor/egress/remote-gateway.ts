import type { Logger } from "pino";
import type { Config } from "../config.js";
import type { RemoteEgress } from "../runtime/container-runtime.js";
import { EgressGateway, type ForwardAccounting, type GatewayLimits, type RouteHandler } from "./gateway.js";
import { hostAddresses, systemResolver, type Forbidden, type Resolver } from "./resolve.js";
import { RemoteHostEgress } from "./sandbox-egress.js";
import type { EgressTokens } from "./tokens.js";

/** What the daemon says of remote hosts' egress (readyz, the start line, GET /hosts). */
export interface RemoteEgressStatus {
  /** What each remote host's firewall must hold its sandboxes to. */
  mode: "gateway" | "none" | "open";
  /** Where remote hosts' sandboxes reach the gateway (`gateway` mode with HYPERVISOR_EGRESS_REMOTE_LISTEN). */
  gateway?: string;
  /** Why `mode` is not HYPERVISOR_EGRESS. */
  reason?: string;
}

export interface RemoteEgressSide {
  status: RemoteEgressStatus;
  remote: RemoteEgress;
  setRouteHandler(handler: RouteHandler | undefined): void;
  setForwardAccounting(accounting: ForwardAccounting | undefined): void;
  close(): Promise<void>;
}

/**
 * The registered remote hosts' addresses, counted per registration: where their sandboxes' calls
 * come from (admitted to the listener for remote hosts), and never a destination of either
 * gateway. A host's firewall admits the hypervisor's address to its published ports and its API,
 * so a call through the gateway to it would reach another user's sandbox, or the host's Podman.
 */
export class RemoteHostAddresses implements Forbidden {
  private readonly hosts = new Map<string, number>();
  private readonly endpoints = new Map<string, number>();

  /** A host at `address` whose API is at `api` (its URL's host, for ssh:// and tcp://), until the returned release. */
  add(address: string, api?: string): () => void {
    const keys: [Map<string, number>, string][] = [[this.hosts, plain(address)]];
    if (api) keys.push([this.endpoints, plain(api)]);
    for (const [map, key] of keys) map.set(key, (map.get(key) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const [map, key] of keys) {
        const left = (map.get(key) ?? 1) - 1;
        if (left > 0) map.set(key, left);
        else map.delete(key);
      }
    };
  }

  /** Whether a connection from `address` is a registered host's. */
  admits(address: string): boolean {
    return this.hosts.has(plain(address));
  }

  has(address: string): boolean {
    const key = plain(address);
    return this.hosts.has(key) || this.endpoints.has(key);
  }
}

/** The host's own addresses and the registered sandbox hosts': what no gateway connects to. */
export function forbiddenWith(own: Forbidden, hosts: RemoteHostAddresses): Forbidden {
  return { has: (address) => own.has(address) || hosts.has(address) };
}

/** `::ffff:10.1.2.3` (a dual-stack socket's view) is `10.1.2.3`. */
function plain(address: string): string {
  return address.startsWith("::ffff:") && address.includes(".") ? address.slice(7) : address;
}

/**
 * Egress for remote Podman hosts' sandboxes (DESIGN §5b, §8a). The hypervisor's kernel cannot
 * hold them: each host's own firewall (deploy/sandbox-host/firewall.sh) does, forwarding their
 * new connections nowhere but to this gateway's listener for remote hosts. That listener admits
 * the registered hosts' addresses only (their sandboxes arrive NATed as the host), and their
 * tokens are bound to that address.
 *
 * In `gateway` mode without HYPERVISOR_EGRESS_REMOTE_LISTEN, or when it cannot listen, remote
 * sandboxes get no proxy variables: `none`, never an open way out, and the daemon says so.
 */
export async function openRemoteEgress(
  config: Config,
  tokens: EgressTokens,
  log: Logger,
  options: { resolve?: Resolver; limits?: Partial<GatewayLimits> },
  hosts: RemoteHostAddresses,
): Promise<RemoteEgressSide> {
  const sides = (mode: RemoteEgressStatus["mode"], gateway: { host: string; port: number }, onHost?: (address: string) => void): RemoteEgress => ({
    mode,
    forHost(address, api) {
      const key = plain(address);
      onHost?.(key);
      return { egress: new RemoteHostEgress(mode, gateway, config.egressAllow, tokens, key), release: hosts.add(key, api) };
    },
  });
  const quiet = { setRouteHandler: () => undefined, setForwardAccounting: () => undefined, close: async () => undefined };
  const listen = config.egressRemoteListen;
  if (config.egress !== "gateway") return { ...quiet, status: { mode: config.egress }, remote: sides(config.egress, config.egressListen) };
  // Said for each remote host as it is loaded or registered: a daemon without any says nothing.
  const none = (reason: string): RemoteEgressSide => ({
    ...quiet,
    status: { mode: "none", reason },
    remote: sides("none", config.egressListen, (address) =>
      log.warn({ host: address, reason }, `sandboxes of the host at ${address} have no way out (egress none): ${reason}`),
    ),
  });
  if (!listen) return none("HYPERVISOR_EGRESS_REMOTE_LISTEN is not set: the gateway has no listener remote hosts reach");
  const gateway = new EgressGateway({
    tokens,
    allow: config.egressAllow,
    resolve: options.resolve ?? systemResolver,
    own: forbiddenWith(hostAddresses([config.egressListen.host, listen.host]), hosts),
    log,
    limits: { bytesPerSecond: config.egressSandboxRate, ...options.limits },
    admits: (address) => hosts.admits(address),
  });
  let bound: { host: string; port: number };
  try {
    bound = await gateway.listen(listen.host, listen.port);
  } catch (err) {
    await gateway.close().catch(() => undefined);
    return none(`the egress gateway cannot listen on ${listen.host}:${listen.port} (HYPERVISOR_EGRESS_REMOTE_LISTEN): ${(err as Error).message}`);
  }
  return {
    status: { mode: "gateway", gateway: `${bound.host}:${bound.port}` },
    remote: sides("gateway", bound),
    setRouteHandler: (handler) => gateway.setRouteHandler(handler),
    setForwardAccounting: (accounting) => gateway.setForwardAccounting(accounting),
    close: () => gateway.close(),
  };
}

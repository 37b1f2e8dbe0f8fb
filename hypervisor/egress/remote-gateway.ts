import type { Logger } from "pino";
import type { Config } from "../config.js";
import type { RemoteEgress } from "../runtime/container-runtime.js";
import { EgressGateway, type ForwardAccounting, type GatewayLimits, type RouteHandler } from "./gateway.js";
import { hostAddresses, systemResolver, type Resolver } from "./resolve.js";
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
): Promise<RemoteEgressSide> {
  const admitted = new Map<string, number>();
  const sides = (mode: RemoteEgressStatus["mode"], gateway: { host: string; port: number }, onHost?: (address: string) => void): RemoteEgress => ({
    mode,
    forHost(address) {
      const key = plain(address);
      onHost?.(key);
      admitted.set(key, (admitted.get(key) ?? 0) + 1);
      let released = false;
      return {
        egress: new RemoteHostEgress(mode, gateway, config.egressAllow, tokens, key),
        release() {
          if (released) return;
          released = true;
          const left = (admitted.get(key) ?? 1) - 1;
          if (left > 0) admitted.set(key, left);
          else admitted.delete(key);
        },
      };
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
    own: hostAddresses([config.egressListen.host, listen.host]),
    log,
    limits: { bytesPerSecond: config.egressSandboxRate, ...options.limits },
    admits: (address) => admitted.has(plain(address)),
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

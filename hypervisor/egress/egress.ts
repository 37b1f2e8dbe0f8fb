import type { IncomingMessage } from "node:http";
import type { Logger } from "pino";
import type { Config } from "../config.js";
import type { Db } from "../db/database.js";
import type { RemoteEgress, SandboxEgress } from "../runtime/container-runtime.js";
import { cannotFence, EgressFence } from "./fence.js";
import { EgressGateway, type ForwardAccounting, type GatewayLimits, type RouteHandler } from "./gateway.js";
import { hostAddresses, systemResolver, type Resolver } from "./resolve.js";
import { forbiddenWith, openRemoteEgress, RemoteHostAddresses, type RemoteEgressStatus } from "./remote-gateway.js";
import { GatewayEgress } from "./sandbox-egress.js";
import { EgressTokens, type Caller } from "./tokens.js";

/** What the daemon says of egress at start and in readyz. */
export interface EgressStatus {
  mode: "gateway" | "none" | "open";
  /** Whether the kernel holds sandboxes to the mode; false: `reason` says why not. */
  enforced: boolean;
  reason?: string;
  /** Where the gateway listens (`gateway` mode). */
  gateway?: string;
  /** Remote hosts' sandboxes: held by each host's own firewall, which the hypervisor cannot see. */
  remote?: RemoteEgressStatus;
}

/** The egress of the daemon: the gateway, the host's fence, the tokens, and the runtimes' hook. */
export interface Egress {
  status: EgressStatus;
  /** For the runtime: absent where egress cannot be enforced (sandboxes then keep no way out but their port). */
  hook: SandboxEgress | undefined;
  /** For remote Podman hosts' runtimes (DESIGN §8a): their tokens and proxy variables. */
  remote?: RemoteEgress;
  /** The credential routes plug in here. */
  setRouteHandler(handler: RouteHandler | undefined): void;
  /** And the forward proxy's budgets and audit. */
  setForwardAccounting(accounting: ForwardAccounting | undefined): void;
  /** The sandbox behind a route request (its token, from its own address). */
  identify(req: IncomingMessage, sourceAddress: string | undefined): Caller | undefined;
  close(): Promise<void>;
}

export interface EgressOptions {
  /** Tests play DNS here. */
  resolve?: Resolver;
  limits?: Partial<GatewayLimits>;
}

/**
 * Opens egress as HYPERVISOR_EGRESS says (DESIGN §5b): for `gateway`, an address of its own for
 * the gateway, the gateway listening there, and the host's rules; for `open`, the host's
 * forwarding. Where the kernel cannot enforce it (no CAP_NET_ADMIN, no iptables), `status` says so and
 * sandboxes get no way out at all rather than an unfenced one.
 */
export async function openEgress(config: Config, db: Db, log: Logger, options: EgressOptions = {}): Promise<Egress> {
  const tokens = new EgressTokens(db);
  // Registered remote hosts: never a destination of this machine's gateway either.
  const hosts = new RemoteHostAddresses();
  const local = await openLocal(config, tokens, log, options, hosts);
  // Only for the Podman runtime, the one with remote hosts.
  if (config.runtime !== "podman") return local;
  const remote = await openRemoteEgress(config, tokens, log, options, hosts);
  return {
    ...local,
    status: { ...local.status, remote: remote.status },
    remote: remote.remote,
    setRouteHandler: (handler) => (local.setRouteHandler(handler), remote.setRouteHandler(handler)),
    setForwardAccounting: (accounting) => (local.setForwardAccounting(accounting), remote.setForwardAccounting(accounting)),
    close: async () => {
      await remote.close();
      await local.close();
    },
  };
}

/** The hypervisor's own host: the gateway on its own link, and this kernel's rules. */
async function openLocal(config: Config, tokens: EgressTokens, log: Logger, options: EgressOptions, hosts: RemoteHostAddresses): Promise<Egress> {
  const { host, port } = config.egressListen;
  const mode = config.egress;
  const fence = new EgressFence(mode, host, config.processNetwork);
  let gateway: EgressGateway | undefined;
  let closing: Promise<void> | undefined;
  const closed = () =>
    (closing ??= (async () => {
      await gateway?.close();
      if (mode !== "none") await fence.down();
    })());
  const base = {
    setRouteHandler: (handler: RouteHandler | undefined) => gateway?.setRouteHandler(handler),
    setForwardAccounting: (accounting: ForwardAccounting | undefined) => gateway?.setForwardAccounting(accounting),
    identify: (req: IncomingMessage, source: string | undefined) => tokens.identify(req.headers, source, true),
    close: closed,
  };
  // Not root, the process runtime gives sandboxes no network namespace of their own (it takes
  // root to make one): they share the host's network, which no rule of the host's can single out.
  if (config.runtime === "process" && process.getuid?.() !== 0)
    return {
      ...base,
      status: { mode, enforced: false, reason: "the daemon is not root: process sandboxes share the host's network, where no egress rule can single them out" },
      hook: undefined,
    };
  if (mode === "none") {
    const cannot = cannotFence();
    if (cannot) return { ...base, status: { mode, enforced: false, reason: cannot }, hook: undefined };
    return { ...base, status: { mode, enforced: true }, hook: new GatewayEgress(mode, { host, port }, config.egressAllow, tokens) };
  }
  const unenforced = async (reason: string): Promise<Egress> => {
    await closed().catch(() => undefined);
    return { ...base, status: { mode, enforced: false, reason }, hook: undefined };
  };
  const noAddress = await fence.address();
  if (noAddress) return unenforced(noAddress);
  let bound = { host, port };
  if (mode === "gateway") {
    gateway = new EgressGateway({
      tokens,
      allow: config.egressAllow,
      resolve: options.resolve ?? systemResolver,
      own: forbiddenWith(hostAddresses([host]), hosts),
      log,
      limits: { bytesPerSecond: config.egressSandboxRate, ...options.limits },
    });
    try {
      bound = await gateway.listen(host, port);
    } catch (err) {
      return unenforced(`the egress gateway cannot listen on ${host}:${port}: ${(err as Error).message}`);
    }
  }
  const noRules = await fence.up(bound.port);
  if (noRules) return unenforced(noRules);
  return {
    ...base,
    status: { mode, enforced: true, ...(mode === "gateway" ? { gateway: `${bound.host}:${bound.port}` } : {}) },
    hook: new GatewayEgress(mode, bound, config.egressAllow, tokens),
  };
}

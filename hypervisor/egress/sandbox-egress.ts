import type { SandboxEgress, SandboxSpec } from "../runtime/container-runtime.js";
import type { Slot } from "../../proxy/target.js";
import type { EgressAllowList } from "./allow-list.js";
import type { EgressTokens } from "./tokens.js";

/**
 * The runtimes' side of egress (DESIGN §5b): in `gateway` mode each start gets a fresh token and
 * the variables ordinary clients read (`HTTPS_PROXY=http://sandbox:<token>@<gateway>`), so a
 * sandbox's HTTP clients go through the gateway without knowing it.
 */
export class GatewayEgress implements SandboxEgress {
  readonly allowedBlocks: readonly string[];

  constructor(
    readonly mode: "gateway" | "none" | "open",
    readonly gateway: { host: string; port: number },
    allow: EgressAllowList,
    private readonly tokens: EgressTokens,
  ) {
    this.allowedBlocks = allow.cidrs;
  }

  envFor(spec: SandboxSpec): Record<string, string> {
    if (this.mode !== "gateway") return {};
    const token = this.tokens.issue({ user: spec.user, slot: spec.slot, generation: spec.generation.id });
    const origin = `http://${this.gateway.host}:${this.gateway.port}`;
    const proxy = `http://sandbox:${token}@${this.gateway.host}:${this.gateway.port}`;
    const noProxy = "localhost,127.0.0.1,::1";
    return {
      HTTP_PROXY: proxy,
      HTTPS_PROXY: proxy,
      http_proxy: proxy,
      https_proxy: proxy,
      NO_PROXY: noProxy,
      no_proxy: noProxy,
      HYPERVISOR_EGRESS_URL: origin,
      HYPERVISOR_EGRESS_TOKEN: token,
    };
  }

  bind(user: string, slot: Slot, address: string): void {
    if (this.mode === "gateway") this.tokens.bind(user, slot, address);
  }

  revoke(user: string, slot: Slot): void {
    this.tokens.revoke(user, slot);
  }
}

/**
 * A remote host's sandboxes (DESIGN §5b, §8a): the proxy variables point at the gateway's listener
 * for remote hosts, and tokens are bound to the host's address, the source their connections
 * arrive with once the host's Podman has NATed them.
 */
export class RemoteHostEgress extends GatewayEgress {
  constructor(
    mode: "gateway" | "none" | "open",
    gateway: { host: string; port: number },
    allow: EgressAllowList,
    tokens: EgressTokens,
    private readonly hostAddress: string,
  ) {
    super(mode, gateway, allow, tokens);
  }

  override bind(user: string, slot: Slot): void {
    super.bind(user, slot, this.hostAddress);
  }
}

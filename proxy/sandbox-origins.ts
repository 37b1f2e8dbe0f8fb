import type { Session } from "./auth-gate.js";
import type { Role } from "./target.js";

/** The one path a sandbox origin answers itself: it turns a launch code into the hv_sandbox cookie. */
export const LAUNCH_PATH = "/_hv/launch";

/** A sandbox origin's user and role, as its host names them: `live-<user>.<domain>`, `dev-<user>.<domain>`. */
export interface SandboxHost {
  user: string;
  role: Role;
}

/** What the data plane asks of the control plane for sandbox origins (DESIGN §4). */
export interface SandboxGate {
  /**
   * The session behind this request's hv_sandbox cookie, if one was issued for exactly this user
   * and role and the session it came from is still valid.
   */
  authenticateSandbox(cookieHeader: string | undefined, host: SandboxHost): Session | undefined;
  /**
   * Spends a one-time launch code issued for this user and role: the hv_sandbox value to set, and
   * the path to go on to (checked when the code was issued, so this origin never reads one).
   */
  redeemLaunch(code: string, host: SandboxHost): { token: string; next: string } | undefined;
}

/** A user name as the control plane allows it (hypervisor/http/user-name.ts), so a label stays a DNS label. */
const SANDBOX_LABEL = /^(live|dev)-([a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?)$/;

/**
 * Sandbox origins: with HYPERVISOR_SANDBOX_DOMAIN each sandbox has its own origin, with the
 * public origin's scheme and port, so its pages share nothing with the hypervisor's (RFC 6454):
 * no cookie, no storage, no same-origin requests. Requests are routed by Host before anything
 * else.
 */
export class SandboxOrigins {
  private readonly suffix: string;
  private readonly port: string;

  constructor(
    private readonly publicOrigin: URL,
    readonly domain: string,
  ) {
    this.suffix = `.${domain}`;
    this.port = publicOrigin.port;
  }

  /**
   * Which sandbox a Host header names: undefined for any host outside the sandbox domain (the
   * public origin among them), "unknown" for a host inside it that names no sandbox or arrives
   * on another port than the public origin's, which no browser of ours would send.
   */
  hostOf(hostHeader: string | undefined): SandboxHost | "unknown" | undefined {
    if (!hostHeader) return undefined;
    const host = hostHeader.toLowerCase();
    const colon = host.lastIndexOf(":");
    const name = colon < 0 ? host : host.slice(0, colon);
    if (!name.endsWith(this.suffix)) return undefined;
    if ((colon < 0 ? "" : host.slice(colon + 1)) !== this.port) return "unknown";
    const m = SANDBOX_LABEL.exec(name.slice(0, -this.suffix.length));
    return m ? { role: m[1] as Role, user: m[2]! } : "unknown";
  }

  /** `<proto>://<role>-<user>.<domain>[:port]` */
  originOf(host: SandboxHost): string {
    return `${this.publicOrigin.protocol}//${host.role}-${host.user}${this.suffix}${this.port ? `:${this.port}` : ""}`;
  }

  /** The public origin's launch link for a role: it comes back to `originOf` with a one-time code. */
  launchUrl(role: Role, next: string): string {
    return `${this.publicOrigin.origin}${launchPath(role, next)}`;
  }
}

/** The launch link's path on the public origin, to the sandbox's page `next`. */
export function launchPath(role: Role, next: string): string {
  return `${LAUNCH_PATH}?role=${role}${next === "/" ? "" : `&next=${encodeURIComponent(next)}`}`;
}

import type { Endpoint, Slot } from "../../proxy/target.js";
import { HypervisorError } from "../errors.js";
import type { LogOptions } from "./log-lines.js";

export const LABELS = {
  managed: "io.hypervisor.managed",
  user: "io.hypervisor.user",
  slot: "io.hypervisor.slot",
  generation: "io.hypervisor.generation",
} as const;

/** What a slot runs: an immutable image ID (podman) or an entry command (process). */
export interface GenerationSpec {
  id: number;
  version: string;
  imageId?: string;
  command?: string[];
}

/** A sandbox's log at most where its limits name none (HYPERVISOR_SANDBOX_LOG_MAX's default). */
export const DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024;

export interface SandboxLimits {
  memoryBytes: number;
  nanoCpus: number;
  pids: number;
  /** Its log at most, rotated (HYPERVISOR_SANDBOX_LOG_MAX); unset, the runtime's default of 10 MiB. */
  logBytes?: number;
  /** Its data at most (HYPERVISOR_SANDBOX_DISK); unset, unbounded. The process runtime measures it. */
  diskBytes?: number;
}

export interface SandboxSpec {
  user: string;
  slot: Slot;
  generation: GenerationSpec;
  /** Operator-configured, non-secret variables; the runtime adds the contract's own. */
  env: Record<string, string>;
  limits: SandboxLimits;
}

export interface SandboxInfo {
  /** Container ID (podman) or process ID (process). */
  id: string;
  name: string;
  user: string;
  slot: Slot;
  generationId: number;
  running: boolean;
  endpoint: Endpoint | undefined;
  startedAt: string | undefined;
  /**
   * Made by an earlier release with weaker containment (podman: without a user namespace). One that
   * runs is adopted as it is; at its next start it is replaced, its data kept.
   */
  outdated?: boolean;
  /** Running but frozen (the cgroup freezer, `podman pause`): its memory kept, no CPU, until thawed. */
  frozen?: boolean;
  /** How its disk (HYPERVISOR_SANDBOX_DISK) holds, where the runtime says: `btrfs qgroup`, `measured`. */
  disk?: string;
  /** Stopped over its disk: why, in words for its user and the operator; it stays stopped until its data is smaller. */
  overDisk?: string;
}

/**
 * DESIGN §5b, what a runtime needs of egress: the mode its kernel rules enforce, where the
 * gateway is, and the per-start token, made into the sandbox's proxy variables. Built by the
 * daemon (hypervisor/egress/); absent, a runtime lets sandboxes out as before.
 */
export interface SandboxEgress {
  readonly mode: "gateway" | "none" | "open";
  /** The gateway's address and port (`gateway` mode: the one destination a sandbox may connect to). */
  readonly gateway: { host: string; port: number };
  /** Private blocks HYPERVISOR_EGRESS_ALLOW opens (`open` mode reaches them; nothing else private). */
  readonly allowedBlocks: readonly string[];
  /** The proxy variables and a fresh token for a sandbox about to start (none outside `gateway`). */
  envFor(spec: SandboxSpec): Record<string, string>;
  /** The address the sandbox got: its token is valid from there only. */
  bind(user: string, slot: Slot, address: string): void;
  /** The sandbox stopped: its token is gone. */
  revoke(user: string, slot: Slot): void;
}

/**
 * DESIGN §5b on a remote Podman host: its sandboxes' connections reach the hypervisor NATed as the
 * host's address, so their tokens are bound to it; the host's own firewall
 * (deploy/sandbox-host/firewall.sh), which the hypervisor cannot see, holds them to `mode`.
 */
export interface RemoteEgress {
  /** What the remote hosts' firewalls must enforce: `none` in `gateway` mode without a listener for them. */
  readonly mode: "gateway" | "none" | "open";
  /**
   * The egress of the sandboxes of the host at `address` (its API at `api`), admitted by the
   * gateway, and neither address a destination of any gateway, until `release`.
   */
  forHost(address: string, api?: string): { egress: SandboxEgress; release(): void };
}

/** How a sandbox's health is asked: over HTTP for real runtimes, from memory for the fake one. */
export interface HealthProbe {
  probe(endpoint: Endpoint, timeoutMs?: number): Promise<boolean>;
  /** The same probe, with what the sandbox answered: the reason a start that timed out gives. */
  check(endpoint: Endpoint, timeoutMs?: number): Promise<HealthAnswer>;
}

export interface HealthAnswer {
  healthy: boolean;
  /** `HTTP 503: <the body's start>`, or the connection's failure, in one printable line. */
  said: string;
}

/**
 * The one seam between the control plane and whatever runs sandboxes. Every implementation
 * passes the same contract suite (test/integration/runtime-contract.ts). What a runtime can do
 * beyond it (its health probe, many hosts, containment checks) it offers as capabilities the
 * runtime factory hands out beside it, never as optional methods here.
 */
export interface ContainerRuntime {
  /** Which generations it runs (the `runtime` of a generation record). */
  readonly kind: "podman" | "process" | "fake";
  /** Throws runtime_unavailable quickly when the backing system cannot be reached. */
  ping(): Promise<void>;
  /** Resolves an image reference to its immutable ID; process runtime: the command's version. */
  resolveImage(ref: string): Promise<{ imageId: string; version: string }>;
  /** Defines the sandbox without starting it. Fails with conflict when it already exists. */
  create(spec: SandboxSpec): Promise<SandboxInfo>;
  /** Starts an existing sandbox; resolves once the process runs (not once it is healthy). */
  start(user: string, slot: Slot): Promise<SandboxInfo>;
  /** SIGTERM, then SIGKILL after timeoutMs. Stopping a stopped sandbox is a no-op. */
  stop(user: string, slot: Slot, timeoutMs: number): Promise<void>;
  restart(user: string, slot: Slot, timeoutMs: number): Promise<SandboxInfo>;
  /** Removes the sandbox; its data survives unless removeData is set. */
  remove(user: string, slot: Slot, opts: { removeData: boolean }): Promise<void>;
  inspect(user: string, slot: Slot): Promise<SandboxInfo | undefined>;
  /** Every sandbox this runtime manages, found by label (podman) or state directory (process). */
  list(): Promise<SandboxInfo[]>;
  /**
   * The sandbox's stdout and stderr as lines, oldest first: the last `tail` already written, then
   * (with follow) each new one until the sandbox stops or the signal fires. A sandbox that does
   * not exist fails the first read with not_found.
   */
  logs(user: string, slot: Slot, opts: LogOptions): AsyncIterable<string>;
}

/**
 * A runtime that can freeze a running sandbox and wake it again (DESIGN §8b): a capability the
 * runtime factory hands out where the runtime has one. Either call on a sandbox already in that
 * state is a no-op; on one that does not run it fails with not_found.
 */
export interface Freezing {
  /** Every process of the sandbox stops where it is; resolves once all have. */
  freeze(user: string, slot: Slot): Promise<void>;
  /** Resolves once the sandbox runs again. */
  thaw(user: string, slot: Slot): Promise<void>;
}

/** A runtime that stops sandboxes itself (process: over their disk), and says so to whoever tracks what runs. */
export interface SelfStopping {
  onStopped(listener: (user: string, slot: Slot) => void): void;
}

/**
 * Which users' sandboxes cannot be reached now (their host is down): asked on every request
 * before the running target is used, so it answers from memory.
 */
export interface Reachability {
  /**
   * `serving`: the caller only wants to reach a sandbox it knows runs and is healthy (no start, no
   * stop), which works while the host's API is down as long as the sandboxes' ports answer.
   */
  unavailableFor(user: string, serving?: boolean): HypervisorError | undefined;
}

export function sandboxName(user: string, slot: Slot): string {
  return `hv-${user}-${slot}`;
}

/** The sandbox contract's environment: an allowlist, never the hypervisor's own env. */
export function sandboxEnv(spec: SandboxSpec, port: number, dataDir: string): Record<string, string> {
  return {
    ...spec.env,
    PORT: String(port),
    DATA_DIR: dataDir,
    HYPERVISOR_USER: spec.user,
    HYPERVISOR_SLOT: spec.slot,
    HYPERVISOR_GENERATION: String(spec.generation.id),
  };
}

export function notFound(user: string, slot: Slot): HypervisorError {
  return new HypervisorError("not_found", `no sandbox for user ${user} in slot ${slot}`, { user, slot });
}

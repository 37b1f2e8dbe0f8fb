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

export interface SandboxLimits {
  memoryBytes: number;
  nanoCpus: number;
  pids: number;
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
}

/** How a sandbox's health is asked: over HTTP for real runtimes, from memory for the fake one. */
export interface HealthProbe {
  probe(endpoint: Endpoint, timeoutMs?: number): Promise<boolean>;
}

/**
 * The one seam between the control plane and whatever runs sandboxes. Every implementation
 * passes the same contract suite (test/integration/runtime-contract.ts).
 */
export interface ContainerRuntime {
  readonly kind: "podman" | "process" | "fake";
  /** How to ask this runtime's sandboxes for their health; GET /health over HTTP when absent. */
  readonly health?: HealthProbe;
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
  /**
   * An error for a user whose sandboxes cannot be reached now (their host is down), asked on every
   * request before the running target is used, so it must answer from memory; absent: always reachable.
   * `serving`: the caller only wants to reach a sandbox it knows runs and is healthy (no start, no
   * stop), which works while the host's API is down as long as the sandboxes' ports answer.
   */
  unavailableFor?(user: string, serving?: boolean): HypervisorError | undefined;
  /** Present when sandboxes can live on more than one host (DESIGN §8a). */
  readonly moves?: HostMoves;
}

/**
 * What moving a user between hosts asks of a runtime; the sandbox manager runs the move (it
 * holds the user's requests meanwhile and starts the sandboxes on the target).
 */
export interface HostMoves {
  hostOf(user: string): string | undefined;
  /** Throws unless `host` can take `user` now: registered, ready, reachable, with room. */
  checkTarget(user: string, host: string): void;
  /** The host a new user would go to, `except` one: what drain moves each user to. */
  pickTarget(user: string, except: string): string;
  /** Copies the user's data volumes (and the images they need) from one host to another; changes nothing on `from`. */
  copyData(user: string, from: string, to: string, imageIds: Partial<Record<Slot, string>>): Promise<void>;
  /** Persists that the user's sandboxes live on `host` from now on. */
  place(user: string, host: string): void;
  /** Forgets where a removed user lived, so the host's capacity is free again. */
  unplace(user: string): void;
  /** Removes the user's containers, volumes and networks on `host`; placement is not changed. */
  discard(user: string, host: string): Promise<void>;
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

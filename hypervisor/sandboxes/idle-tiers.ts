import { readFile } from "node:fs/promises";
import type { Logger } from "pino";
import type { AuditLog } from "../audit/audit-log.js";
import type { Config } from "../config.js";
import { HypervisorError } from "../errors.js";
import type { Metrics } from "../metrics/metrics.js";
import type { Slot } from "../../proxy/target.js";

/** A running sandbox as the idle tiers see it. */
export interface TierSandbox {
  user: string;
  slot: Slot;
  lastActivity: number;
  openSockets: number;
  frozen: boolean;
}

/** What the tiers ask of the manager that owns the sandboxes. */
export interface TierActions {
  running(): Iterable<TierSandbox>;
  /** Absent where the runtime cannot freeze: idle sandboxes are then only stopped. */
  freeze?: (s: TierSandbox) => Promise<void>;
  stop(s: TierSandbox): Promise<void>;
}

export type TierConfig = Pick<Config, "idleFreezeMs" | "idleStopMs" | "memoryReserveBytes">;

/** The host's available memory in bytes (MemAvailable: what can be had without swapping). */
export async function memAvailable(): Promise<number> {
  const meminfo = await readFile("/proc/meminfo", "utf8");
  const kib = /^MemAvailable:\s+(\d+) kB$/m.exec(meminfo)?.[1];
  if (kib === undefined) throw new Error("/proc/meminfo has no MemAvailable");
  return Number(kib) * 1024;
}

/** What a sandbox idle since `lastActivity` becomes now, if anything: an open WebSocket keeps it as it is. */
export function idleStep(s: TierSandbox, now: number, config: TierConfig, canFreeze: boolean): "freeze" | "stop" | undefined {
  if (s.openSockets > 0) return undefined;
  const idle = now - s.lastActivity;
  if (config.idleStopMs > 0 && idle >= config.idleStopMs) return "stop";
  if (canFreeze && !s.frozen && config.idleFreezeMs > 0 && idle >= config.idleFreezeMs) return "freeze";
  return undefined;
}

/**
 * The idle tiers (DESIGN §8b): a sandbox idle for HYPERVISOR_IDLE_FREEZE_MS is frozen (memory
 * kept, no CPU), one idle for HYPERVISOR_IDLE_STOP_MS stopped. And the memory reserve: while
 * the host's available memory is below HYPERVISOR_MEMORY_RESERVE, frozen sandboxes are
 * stopped, least recently used first, and once none is left new starts are refused with a 503
 * rather than letting the kernel's OOM killer choose a victim (it might choose the hypervisor).
 */
export class IdleTiers {
  private timer: NodeJS.Timeout | undefined;
  /** One relief at a time: a sweep and a start both short of memory stop each frozen sandbox once. */
  private relieving: Promise<boolean> | undefined;

  constructor(
    private readonly config: TierConfig,
    private readonly actions: TierActions,
    private readonly log: Logger,
    private readonly observers: { metrics?: Pick<Metrics, "memoryPressed">; audit?: Pick<AuditLog, "record"> } = {},
    /** The available memory; tests inject readings. */
    private readonly available: () => Promise<number> = memAvailable,
  ) {}

  start(): void {
    const tiers = [this.actions.freeze ? this.config.idleFreezeMs : 0, this.config.idleStopMs, this.config.memoryReserveBytes > 0 ? 4000 : 0];
    const shortest = Math.min(...tiers.filter((ms) => ms > 0));
    if (!Number.isFinite(shortest)) return;
    const every = Math.min(60_000, Math.max(250, Math.floor(shortest / 4)));
    this.timer = setInterval(() => void this.sweep(), every);
    this.timer.unref();
  }

  close(): void {
    clearInterval(this.timer);
  }

  /** One pass: memory first (it may stop frozen sandboxes), then each sandbox's idle step. */
  async sweep(): Promise<void> {
    await this.relieve().catch((err: unknown) => this.log.warn({ err }, "memory reserve check failed"));
    const now = Date.now();
    for (const s of [...this.actions.running()]) {
      const step = idleStep(s, now, this.config, this.actions.freeze !== undefined);
      if (!step) continue;
      this.log.info({ user: s.user, slot: s.slot, idleMs: now - s.lastActivity }, step === "stop" ? "stopping idle sandbox" : "freezing idle sandbox");
      const act = step === "stop" ? this.actions.stop(s) : this.actions.freeze!(s);
      await act.catch((err: unknown) => this.log.warn({ err, user: s.user, slot: s.slot }, `idle ${step} failed`));
    }
  }

  /**
   * Before a start: with memory below the reserve, frozen sandboxes are stopped first; if that
   * is not enough the start is refused (503) and nothing of it happens.
   */
  async admitStart(user: string, slot: Slot): Promise<void> {
    if (this.config.memoryReserveBytes <= 0 || !(await this.relieve())) return;
    const available = await this.available();
    this.log.warn({ user, slot, available, reserve: this.config.memoryReserveBytes }, "start refused: available memory below the reserve");
    this.observers.metrics?.memoryPressed("refused");
    this.observers.audit?.record({
      actor: "hypervisor",
      action: "sandbox.start.refused",
      target: `${user}/${slot}`,
      outcome: "refused",
      details: { reason: "memory_reserve", availableBytes: available, reserveBytes: this.config.memoryReserveBytes },
    });
    throw new HypervisorError(
      "capacity_exhausted",
      `this host is short of memory (${mib(available)} MiB available, ${mib(this.config.memoryReserveBytes)} MiB kept in reserve): no sandbox can start now; try again later`,
      { retryAfterSeconds: 30 },
    );
  }

  /** Stops frozen sandboxes, least recently used first, until memory is back above the reserve; true while still short. */
  private relieve(): Promise<boolean> {
    if (this.config.memoryReserveBytes <= 0) return Promise.resolve(false);
    this.relieving ??= this.stopFrozenWhileShort().finally(() => (this.relieving = undefined));
    return this.relieving;
  }

  private async stopFrozenWhileShort(): Promise<boolean> {
    const tried = new Set<TierSandbox>();
    for (;;) {
      const available = await this.available();
      if (available >= this.config.memoryReserveBytes) return false;
      const victim = [...this.actions.running()].filter((s) => s.frozen && !tried.has(s)).sort((a, b) => a.lastActivity - b.lastActivity)[0];
      if (!victim) return true;
      tried.add(victim);
      this.log.warn(
        { user: victim.user, slot: victim.slot, available, reserve: this.config.memoryReserveBytes },
        "stopping a frozen sandbox: available memory below the reserve",
      );
      const outcome = await this.actions.stop(victim).then(
        () => "ok" as const,
        (err: unknown) => {
          this.log.warn({ err, user: victim.user, slot: victim.slot }, "stopping a frozen sandbox for memory failed");
          return "error" as const;
        },
      );
      if (outcome === "ok") this.observers.metrics?.memoryPressed("stopped");
      this.observers.audit?.record({
        actor: "hypervisor",
        action: "sandbox.stop.memory",
        target: `${victim.user}/${victim.slot}`,
        outcome,
        details: { availableBytes: available, reserveBytes: this.config.memoryReserveBytes, idleMs: Date.now() - victim.lastActivity },
      });
    }
  }
}

function mib(bytes: number): number {
  return Math.round(bytes / 1024 ** 2);
}

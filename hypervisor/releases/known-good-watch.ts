import type { Logger } from "pino";
import type { AuditLog } from "../audit/audit-log.js";
import type { Config } from "../config.js";
import type { GenerationStore } from "../generations/generation-store.js";
import type { UserDirectory } from "../users/user-directory.js";
import type { SandboxManager } from "../sandboxes/sandbox-manager.js";

/**
 * Release policy: promotes a candidate generation to known-good once it has served live for
 * HYPERVISOR_KNOWN_GOOD_AFTER_MS and every live sandbox of it answers its health check now.
 * This is also the health check that keeps running after a cut-over: a failing one is logged.
 */
export class KnownGoodWatch {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly generations: GenerationStore,
    private readonly users: UserDirectory,
    private readonly manager: SandboxManager,
    private readonly audit: AuditLog,
    private readonly config: Pick<Config, "knownGoodAfterMs">,
    private readonly log: Logger,
  ) {}

  start(): void {
    const every = Math.min(30_000, Math.max(250, Math.floor(this.config.knownGoodAfterMs / 4)));
    this.timer = setInterval(() => void this.check().catch((err: unknown) => this.log.warn({ err }, "known-good check failed")), every);
    this.timer.unref();
  }

  close(): void {
    clearInterval(this.timer);
  }

  async check(now = Date.now()): Promise<number[]> {
    const promoted: number[] = [];
    const live = this.users.assignments().filter((p) => p.role === "live");
    for (const g of this.generations.list()) {
      if (g.state !== "candidate" || g.runtime !== this.manager.runtimeKind) continue;
      const placed = live.filter((p) => p.generationId === g.id);
      if (placed.some((p) => now - p.roleSince < this.config.knownGoodAfterMs)) continue;
      // Idle-stopped or frozen sandboxes prove nothing either way (a frozen one answers nothing); the running ones must all be healthy.
      const serving = placed.filter((p) => this.manager.isRunning(p.user, p.slot) && !this.manager.isFrozen(p.user, p.slot));
      if (serving.length === 0) continue;
      const health = await Promise.all(serving.map((p) => this.manager.healthy(p.user, p.slot)));
      if (health.some((ok) => !ok)) {
        this.log.warn({ generation: g.id, unhealthy: serving.filter((_, i) => !health[i]).map((p) => p.user) }, "live generation not healthy");
        continue;
      }
      this.generations.setState(g.id, "known-good");
      this.audit.record({
        actor: "hypervisor",
        action: "generation.known-good",
        target: String(g.id),
        outcome: "ok",
        details: { automatic: true, users: serving.length },
      });
      this.log.info({ generation: g.id, users: serving.length }, "generation known-good");
      promoted.push(g.id);
    }
    return promoted;
  }
}

import { join } from "node:path";
import type { Logger } from "pino";
import { AuditLog } from "./audit/audit-log.js";
import type { Config } from "./config.js";
import { checkDatabase, openDatabase, type Db } from "./db/database.js";
import { GenerationStore } from "./generations/generation-store.js";
import type { ContainerRuntime } from "./runtime/container-runtime.js";
import { PodmanRuntime } from "./runtime/podman-runtime.js";
import { ProcessRuntime } from "./runtime/process-runtime.js";
import { RouteStore } from "./sandboxes/route-store.js";
import { SandboxManager } from "./sandboxes/sandbox-manager.js";

/** Everything the listeners need, built once and handed in (no module singletons). */
export interface Services {
  config: Config;
  log: Logger;
  db: Db;
  runtime: ContainerRuntime;
  routes: RouteStore;
  generations: GenerationStore;
  audit: AuditLog;
  manager: SandboxManager;
  startedAt: number;
  /** Throws when a dependency the daemon cannot serve without is down. */
  readiness(): Promise<{ database: boolean; runtime: boolean }>;
}

export function createRuntime(config: Config): ContainerRuntime {
  return config.runtime === "podman" ? new PodmanRuntime(config.podmanSocket) : new ProcessRuntime(join(config.stateDir, "sandboxes"));
}

export function createServices(config: Config, log: Logger, runtime: ContainerRuntime = createRuntime(config)): Services {
  const db = openDatabase(join(config.stateDir, "hypervisor.db"));
  const routes = new RouteStore(db);
  const generations = new GenerationStore(db);
  const manager = new SandboxManager(runtime, routes, generations, config, log);
  return {
    config,
    log,
    db,
    runtime,
    routes,
    generations,
    audit: new AuditLog(db),
    manager,
    startedAt: Date.now(),
    async readiness() {
      const database = (() => {
        try {
          checkDatabase(db);
          return true;
        } catch {
          return false;
        }
      })();
      const runtimeUp = await runtime.ping().then(
        () => true,
        () => false,
      );
      return { database, runtime: runtimeUp };
    },
  };
}

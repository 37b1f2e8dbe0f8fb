import { join } from "node:path";
import type { Logger } from "pino";
import { SandboxOrigins } from "../proxy/sandbox-origins.js";
import { AuditLog } from "./audit/audit-log.js";
import { RefusalAudit } from "./audit/refusal-audit.js";
import { AuthService } from "./auth/auth-service.js";
import { InviteStore } from "./auth/invite-store.js";
import { SandboxGrants } from "./auth/sandbox-grants.js";
import { SessionStore } from "./auth/session-store.js";
import type { Config } from "./config.js";
import { checkDatabase, openDatabase, type Db } from "./db/database.js";
import { defaultGeneration } from "./generations/default-generation.js";
import { GenerationStore } from "./generations/generation-store.js";
import { HostChecks } from "./host-checks.js";
import type { FleetRuntime } from "./hosts/fleet-runtime.js";
import { HostStore } from "./hosts/host-store.js";
import { Metrics } from "./metrics/metrics.js";
import { KnownGoodWatch } from "./releases/known-good-watch.js";
import { ReleaseController } from "./releases/release-controller.js";
import { RouteController } from "./routing/route-controller.js";
import { RouteStore } from "./routing/route-store.js";
import type { ContainerRuntime } from "./runtime/container-runtime.js";
import { ProcessRuntime } from "./runtime/process/process-runtime.js";
import { SandboxManager } from "./sandboxes/sandbox-manager.js";

/** Everything the listeners need, built once and handed in (no module singletons). */
export interface Services {
  config: Config;
  log: Logger;
  db: Db;
  runtime: ContainerRuntime;
  /** Users and their routes: the one owner of the route table and the route store. */
  routing: RouteController;
  generations: GenerationStore;
  audit: AuditLog;
  /** Refused operator calls, audited at a bounded rate (DESIGN §6). */
  refusals: RefusalAudit;
  manager: SandboxManager;
  releases: ReleaseController;
  knownGood: KnownGoodWatch;
  /** Sessions by cookie; `authenticate()` is what the proxy asks on every request. */
  sessions: SessionStore;
  /** Passkey accounts, recovery codes, WebAuthn ceremonies, auth rate limits. */
  auth: AuthService;
  invites: InviteStore;
  /** Sandbox origins (HYPERVISOR_SANDBOX_DOMAIN); undefined in path mode. */
  sandboxOrigins: SandboxOrigins | undefined;
  /** Launch codes and hv_sandbox cookies of sandbox origins. */
  sandboxGrants: SandboxGrants;
  /** Prometheus metrics on this daemon's own registry (`GET /metrics`). */
  metrics: Metrics;
  startedAt: number;
  /** The Podman hosts (DESIGN §8a); undefined on the process runtime. */
  hosts: FleetRuntime | undefined;
  /** What the daemon cannot serve without, and the hosts that do not answer (degraded, not down). */
  readiness(): Promise<{ database: boolean; runtime: boolean; unreachableHosts?: string[] }>;
  /** What this machine lacks for the Podman runtime's rules (cgroup controllers, auto-update); undefined on other runtimes. */
  hostChecks: HostChecks | undefined;
}

/** The configured runtime. Podman's client (dockerode, ssh2, ...) is loaded only for Podman: a process-runtime daemon starts without it. */
export async function createRuntime(config: Config): Promise<ContainerRuntime> {
  if (config.runtime === "process") {
    return new ProcessRuntime({
      recordsDir: join(config.stateDir, "sandboxes"),
      dataDir: config.sandboxDataDir,
      protectedPaths: [config.stateDir, config.operatorSocket, ...(config.operatorTokenFile ? [config.operatorTokenFile] : [])],
      network: config.processNetwork,
    });
  }
  const { FleetRuntime } = await import("./hosts/fleet-runtime.js");
  return new FleetRuntime({
    localSocket: config.podmanSocket,
    localCapacity: config.maxSandboxes,
    ssh: { keyFile: config.sshKeyFile, knownHostsFile: config.sshKnownHostsFile },
  });
}

function isFleet(runtime: ContainerRuntime): runtime is FleetRuntime {
  return runtime.moves !== undefined && "attach" in runtime;
}

export function createServices(config: Config, log: Logger, runtime: ContainerRuntime): Services {
  const db = openDatabase(join(config.stateDir, "hypervisor.db"));
  const generations = new GenerationStore(db);
  const hosts = isFleet(runtime) ? runtime : undefined;
  hosts?.attach(new HostStore(db), log);
  const routing = new RouteController(new RouteStore(db), async () => (await defaultGeneration(generations, runtime, config)).id);
  const metrics = new Metrics({ maxSandboxes: config.maxSandboxes });
  const manager = new SandboxManager(runtime, routing, generations, config, log, metrics);
  metrics.readSandboxesFrom(() => ({ ...manager.counts(), slots: 2 * routing.users().length }));
  if (hosts) metrics.readHostsFrom(() => hosts.hostHealth());
  const audit = new AuditLog(db);
  const sessions = new SessionStore(db);
  const invites = new InviteStore(db);
  const auth = new AuthService({ db, config, routing, sessions, invites });
  const hostChecks = runtime.kind === "podman" ? new HostChecks() : undefined;
  void hostChecks?.refresh().then((report) => {
    for (const warning of report.warnings) log.warn({ host: report }, warning);
  });
  return {
    config,
    log,
    db,
    runtime,
    routing,
    generations,
    audit,
    refusals: new RefusalAudit(audit),
    manager,
    releases: new ReleaseController(routing, manager, generations, config, log, metrics),
    knownGood: new KnownGoodWatch(generations, routing, manager, audit, config, log),
    sessions,
    auth,
    invites,
    sandboxOrigins: config.sandboxDomain === undefined ? undefined : new SandboxOrigins(config.publicOrigin, config.sandboxDomain),
    sandboxGrants: new SandboxGrants(sessions),
    metrics,
    startedAt: Date.now(),
    hosts,
    hostChecks,
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
      const unreachableHosts = hosts?.hostHealth().flatMap((h) => (h.up ? [] : [h.name]));
      return { database, runtime: runtimeUp, ...(unreachableHosts ? { unreachableHosts } : {}) };
    },
  };
}

import { join } from "node:path";
import type { Logger } from "pino";
import type { AuthGate } from "../proxy/auth-gate.js";
import { SandboxOrigins } from "../proxy/sandbox-origins.js";
import { AuditLog } from "./audit/audit-log.js";
import { RefusalAudit } from "./audit/refusal-audit.js";
import { AuthService } from "./auth/auth-service.js";
import { InviteStore } from "./auth/invite-store.js";
import { SandboxGrants } from "./auth/sandbox-grants.js";
import { SessionStore } from "./auth/session-store.js";
import type { Config } from "./config.js";
import { checkDatabase, openDatabase, type Db } from "./db/database.js";
import { buildEgressCredentials, type EgressCredentials } from "./egress/egress-service.js";
import { openEgress, type Egress, type EgressOptions } from "./egress/egress.js";
import { defaultGeneration } from "./generations/default-generation.js";
import { GenerationStore } from "./generations/generation-store.js";
import type { HostFleet } from "./hosts/host-fleet.js";
import { Metrics } from "./metrics/metrics.js";
import { KnownGoodWatch } from "./releases/known-good-watch.js";
import { ReleaseController } from "./releases/release-controller.js";
import { RouteController } from "./routing/route-controller.js";
import { RouteStore } from "./routing/route-store.js";
import { UserMoves } from "./operations/user-moves.js";
import { UserRemoval } from "./operations/user-removal.js";
import type { ContainerRuntime } from "./runtime/container-runtime.js";
import { createRuntime, type Runtime, type RuntimeChecks } from "./runtime-factory.js";
import { SandboxManager } from "./sandboxes/sandbox-manager.js";
import { SandboxStatusView } from "./sandboxes/sandbox-status.js";
import { SnapshotStore } from "./snapshots/snapshot-store.js";
import { Snapshots } from "./snapshots/snapshots.js";
import { DataReleases } from "./snapshots/data-releases.js";
import { UserDirectory } from "./users/user-directory.js";
import { UserStore } from "./users/user-store.js";

/** Everything the listeners need, built once and handed in (no module singletons). */
export interface Services {
  config: Config;
  log: Logger;
  db: Db;
  runtime: ContainerRuntime;
  /** What a generation names on this runtime: an image or a command. */
  takes: "image" | "command";
  /** What the daemon checks of this machine for the runtime: containment (process), the host's rules (podman: cgroup controllers, auto-update). */
  checks: RuntimeChecks;
  /** Users, their slots, disabled or not, and the per-user lock. */
  users: UserDirectory;
  /** The one owner of the route table (live/dev → slot) and its flips. */
  routing: RouteController;
  generations: GenerationStore;
  audit: AuditLog;
  /** Refused operator calls, audited at a bounded rate (DESIGN §6). */
  refusals: RefusalAudit;
  manager: SandboxManager;
  /** What each role of each user runs now: the operator's and the account page's view. */
  sandboxStatus: SandboxStatusView;
  releases: ReleaseController;
  knownGood: KnownGoodWatch;
  /** Removing a user, with or without its data. */
  userRemoval: UserRemoval;
  /** Moving users between Podman hosts, one or a whole host. */
  userMoves: UserMoves;
  /** Snapshots of slot data: take, restore, pin, delete, export (DESIGN §2a). */
  snapshots: Snapshots;
  /** Promote on live's own data, rollback with data, fork (DESIGN §2a). */
  dataReleases: DataReleases;
  /** Sessions by cookie; `authenticate()` is what the proxy asks on every request. */
  sessions: SessionStore;
  /** The proxy's session check, counting refused session cookies in the metrics. */
  authGate: AuthGate;
  /** Passkey accounts, recovery codes, WebAuthn ceremonies, auth rate limits. */
  auth: AuthService;
  invites: InviteStore;
  /** Sandbox origins (HYPERVISOR_SANDBOX_DOMAIN); undefined in path mode. */
  sandboxOrigins: SandboxOrigins | undefined;
  /** Launch codes and hv_sandbox cookies of sandbox origins. */
  sandboxGrants: SandboxGrants;
  /** Prometheus metrics on this daemon's own registry (`GET /metrics`). */
  metrics: Metrics;
  /** Egress routes with injected credentials, users' own keys, budgets and the egress audit (DESIGN §5b). */
  egressCredentials: EgressCredentials;
  startedAt: number;
  /** The Podman hosts (DESIGN §8a); undefined on the process runtime. */
  fleet: HostFleet | undefined;
  /** DESIGN §5b: the gateway, its route hook and `identify`, and whether the kernel enforces the mode. */
  egress: Egress;
  /** What the daemon cannot serve without, and the hosts that do not answer (degraded, not down). */
  readiness(): Promise<{ database: boolean; runtime: boolean; unreachableHosts?: string[] }>;
  /** Starts the background work, in order: host health checks, host checks, idle stops, the known-good watch. */
  start(): void;
  /** Stops the background work; state stays open for requests still in flight. */
  stop(): void;
  /** Stops, then closes state: the refusals still buffered are written and the database closed. */
  close(): void;
}

export interface ServiceOptions {
  /** A runtime of the caller's (tests: the fake one, or a process runtime of their own) instead of the configured one. */
  runtime?: ContainerRuntime;
  /** The host's available memory in bytes, for the memory reserve (tests inject readings). */
  memAvailable?: () => Promise<number>;
  /** Tests: the gateway's resolver and limits. */
  egress?: EgressOptions;
}

/**
 * The one wiring: opens the state dir's database, builds the configured runtime (the factory)
 * and every service on them. The daemon and the tests' control plane both build through here.
 */
export async function buildServices(config: Config, log: Logger, options: ServiceOptions = {}): Promise<Services> {
  const db = openDatabase(join(config.stateDir, "hypervisor.db"));
  let egress: Egress | undefined;
  try {
    egress = await openEgress(config, db, log, options.egress);
    return wire(
      config,
      log,
      db,
      await createRuntime(config, { db, log, egress: egress.hook, remoteEgress: egress.remote }, options.runtime),
      egress,
      options.memAvailable,
    );
  } catch (err) {
    await egress?.close().catch(() => undefined);
    db.close();
    throw err;
  }
}

function wire(config: Config, log: Logger, db: Db, built: Runtime, egress: Egress, memAvailable?: () => Promise<number>): Services {
  const { runtime, fleet, takes, checks, freezing } = built;
  const generations = new GenerationStore(db);
  const users = new UserDirectory(new UserStore(db), async () => (await defaultGeneration(generations, built, config)).id);
  const routing = new RouteController(new RouteStore(db), users);
  const metrics = new Metrics({ maxSandboxes: config.maxSandboxes });
  const audit = new AuditLog(db);
  const manager = new SandboxManager(
    { runtime, health: built.health, ...(fleet ? { reach: fleet } : {}), ...(freezing ? { freezing } : {}), ...(memAvailable ? { memAvailable } : {}) },
    users,
    routing,
    generations,
    config,
    log,
    metrics,
    audit,
  );
  built.selfStopping?.onStopped((user, slot) => manager.forgetStopped(user, slot));
  metrics.readSandboxesFrom(() => ({ ...manager.counts(), slots: 2 * users.users().length }));
  if (fleet) metrics.readHostsFrom(() => fleet.hostHealth());
  const refusals = new RefusalAudit(audit);
  const egressCredentials = buildEgressCredentials(config, { db, audit, registry: metrics.registry, log });
  // The gateway hands its route requests, caller known, to the routes with their credentials.
  egress.setRouteHandler(egressCredentials.handleRoute);
  egress.setForwardAccounting(egressCredentials.forwardAccounting);
  const sessions = new SessionStore(db);
  const invites = new InviteStore(db);
  const auth = new AuthService({ db, config, users, sessions, invites });
  const knownGood = new KnownGoodWatch(generations, users, manager, audit, config, log);
  const snapshots = new Snapshots(new SnapshotStore(db), built.slotData, users, routing, manager, config, log);
  const stop = () => {
    manager.close();
    knownGood.close();
    fleet?.close();
  };
  return {
    config,
    log,
    db,
    runtime,
    takes,
    checks,
    users,
    routing,
    generations,
    audit,
    refusals,
    manager,
    sandboxStatus: new SandboxStatusView(runtime, built.health, users, routing, manager),
    releases: new ReleaseController(users, routing, manager, generations, config, log, metrics),
    knownGood,
    userRemoval: new UserRemoval(users, routing, sessions, manager, fleet, log, snapshots),
    userMoves: new UserMoves(fleet, users, manager, generations, log),
    snapshots,
    dataReleases: new DataReleases(users, routing, manager, generations, snapshots, config, log),
    sessions,
    authGate: {
      credentials: (cookie) => sessions.credentials(cookie),
      authenticateCredentials: (credentials) => {
        const session = sessions.authenticateCredentials(credentials);
        // Metrics: a session cookie the store refused (unknown, expired, revoked); no cost on success.
        if (!session && credentials.presented > 0) metrics.authFailure("session");
        return session;
      },
    },
    auth,
    invites,
    sandboxOrigins: config.sandboxDomain === undefined ? undefined : new SandboxOrigins(config.publicOrigin, config.sandboxDomain),
    sandboxGrants: new SandboxGrants(sessions, db),
    metrics,
    egressCredentials,
    startedAt: Date.now(),
    fleet,
    egress,
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
      const unreachableHosts = fleet?.hostHealth().flatMap((h) => (h.up ? [] : [h.name]));
      return { database, runtime: runtimeUp, ...(unreachableHosts ? { unreachableHosts } : {}) };
    },
    start() {
      fleet?.start();
      void checks.host?.refresh().then((report) => {
        for (const warning of report.warnings) log.warn({ host: report }, warning);
      });
      manager.startIdleSweep();
      knownGood.start();
      // What a crash left half-written is removed (and an interrupted restore undone) before it can confuse anyone.
      void snapshots.recoverAll();
    },
    stop,
    close() {
      stop();
      refusals.flush();
      egressCredentials.audit.flush();
      void egress.close();
      db.close();
    },
  };
}

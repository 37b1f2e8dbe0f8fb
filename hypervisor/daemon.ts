import { getRequestListener } from "@hono/node-server";
import { chmodSync, mkdirSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo, ListenOptions } from "node:net";
import { dirname } from "node:path";
import type { Logger } from "pino";
import { ConfigError, type Config } from "./config.js";
import { PublicProxy } from "../proxy/public-proxy.js";
import type { SessionCredentials } from "../proxy/auth-gate.js";
import { ConnectionDrain } from "./http/connection-drain.js";
import { prepareStateDir, refuseRuntimeSwitch } from "./db/state-dir.js";
import { createOperatorApp } from "./operator/operator-app.js";
import { BrowserPages } from "./pages/browser-pages.js";
import { createPublicApp } from "./public-app.js";
import type { ContainerRuntime } from "./runtime/container-runtime.js";
import { ProcessRuntime } from "./runtime/process/process-runtime.js";
import { createRuntime, createServices, type Services } from "./services.js";
import type { InheritedSockets } from "./socket-activation.js";

export interface Daemon {
  services: Services;
  proxy: PublicProxy;
  publicAddress: AddressInfo;
  operatorSocket: string;
  operatorAddress: AddressInfo | undefined;
  /**
   * Stops accepting, closes WebSockets with 1012, lets in-flight HTTP finish within
   * HYPERVISOR_SHUTDOWN_GRACE_MS (cutting what is left), then closes state; sandboxes keep running.
   */
  close(): Promise<void>;
}

export interface DaemonOptions {
  /** A runtime of the caller's (tests: the fake one) instead of the configured one. */
  runtime?: ContainerRuntime;
  /** Listening sockets passed by systemd (socket activation), used instead of binding. */
  sockets?: InheritedSockets;
}

const ADOPT_RETRY_MS = 2000;
/** How often open WebSockets' sessions are checked for expiry: their last moment plus at most this. */
const SESSION_SWEEP_MS = 5000;

/** Builds the services and opens both listeners. `main.ts` and the integration tests call this. */
export async function startDaemon(config: Config, log: Logger, { runtime, sockets = {} }: DaemonOptions = {}): Promise<Daemon> {
  prepareStateDir(config.stateDir);
  refuseRuntimeSwitch(config.stateDir, runtime?.kind ?? config.runtime);
  const chosen = runtime ?? (await createRuntime(config));
  if (chosen instanceof ProcessRuntime) await checkContainment(chosen, config, log);
  const services = createServices(config, log, chosen);
  // Adopt before serving, so the first requests already see what runs.
  const adoption = await adoptUntilDone(services);

  const { metrics } = services;
  const pages = new BrowserPages({ publicOrigin: config.publicOrigin, sandboxOrigins: services.sandboxOrigins !== undefined });
  const authenticateCredentials = (credentials: SessionCredentials) => {
    const session = services.sessions.authenticateCredentials(credentials);
    // Metrics: a session cookie the store refused (unknown, expired, revoked); no cost on success.
    if (!session && credentials.presented > 0) metrics.authFailure("session");
    return session;
  };
  const proxy = new PublicProxy({
    credentials: (cookie) => services.sessions.credentials(cookie),
    authenticateCredentials,
    targets: services.manager,
    routes: services.routing,
    app: getRequestListener(createPublicApp(services, pages).fetch),
    pages,
    publicOrigin: config.publicOrigin,
    ...(services.sandboxOrigins ? { sandboxes: { origins: services.sandboxOrigins, gate: services.sandboxGrants } } : {}),
    trustedProxies: config.trustedProxies,
    log,
    drainMs: config.drainMs,
    observe: metrics.observeProxied,
  });
  metrics.readWebSocketsFrom(() => proxy.websockets.openCount());
  // DESIGN §5: a session's WebSockets close with it, whatever ended it.
  services.sessions.onEnded((sessionId) => proxy.websockets.closeSession(sessionId));
  // Expiry happens by the clock, not by a call: look for it while WebSockets may outlive a session.
  const sessionSweep = setInterval(() => {
    if (proxy.websockets.openCount() > 0) services.sessions.sweep();
  }, SESSION_SWEEP_MS).unref();
  const publicServer = createServer(proxy.handleRequest);
  // Tracked from the first connection on, so close() knows every one of them.
  const drains = [new ConnectionDrain(publicServer)];
  publicServer.on("upgrade", proxy.handleUpgrade);
  await listen(publicServer, sockets.public !== undefined ? { fd: sockets.public } : config.listen);
  const publicAddress = publicServer.address();
  if (publicAddress === null || typeof publicAddress === "string") throw new Error("the socket passed as public is not a TCP socket");
  if (sockets.public !== undefined && config.listen.port !== 0 && config.listen.port !== publicAddress.port) {
    log.warn({ socket: publicAddress.port, HYPERVISOR_LISTEN: config.listen.port }, "the public socket passed by systemd is not on HYPERVISOR_LISTEN's port");
  }

  const operatorServer = createServer(getRequestListener(createOperatorApp(services, "unix").fetch));
  drains.push(new ConnectionDrain(operatorServer));
  if (sockets.operator !== undefined) {
    // systemd made this socket file (SocketMode=0600) and owns it: not ours to remove or chmod.
    await listen(operatorServer, { fd: sockets.operator });
    if (operatorServer.address() !== null) throw new Error("the socket passed as operator is not a unix socket");
  } else {
    mkdirSync(dirname(config.operatorSocket), { recursive: true, mode: 0o700 });
    // A socket file left by a killed predecessor would make listen() fail with EADDRINUSE.
    rmSync(config.operatorSocket, { force: true });
    await listen(operatorServer, { path: config.operatorSocket });
    chmodSync(config.operatorSocket, 0o600);
  }

  let operatorTcp: Server | undefined;
  let operatorAddress: AddressInfo | undefined;
  if (config.operatorListen) {
    operatorTcp = createServer(getRequestListener(createOperatorApp(services, "tcp").fetch));
    drains.push(new ConnectionDrain(operatorTcp));
    await listen(operatorTcp, config.operatorListen);
    operatorAddress = operatorTcp.address() as AddressInfo;
  }
  services.manager.startIdleSweep();
  services.knownGood.start();
  log.info(
    {
      url: config.publicOrigin.origin,
      listen: `${publicAddress.address}:${publicAddress.port}`,
      operatorSocket: config.operatorSocket,
      socketActivated: Object.keys(sockets),
      runtime: services.runtime.kind,
    },
    `hypervisor started: open ${config.publicOrigin.origin} in a browser`,
  );

  return {
    services,
    proxy,
    publicAddress,
    operatorSocket: config.operatorSocket,
    operatorAddress,
    async close() {
      const began = performance.now();
      // With socket activation the kernel queues new connections for the next daemon from here on.
      const drained = Promise.all(drains.map((drain) => drain.close(config.shutdownGraceMs)));
      adoption.cancel();
      clearInterval(sessionSweep);
      services.manager.close();
      services.knownGood.close();
      services.hosts?.close();
      proxy.closeWebSockets();
      await drained;
      // Only now: requests in flight until a moment ago still needed the upstream pools and the database.
      proxy.close();
      services.refusals.flush();
      services.db.close();
      log.info({ ms: Math.round(performance.now() - began) }, "hypervisor stopped; sandboxes left running");
    },
  };
}

/**
 * DESIGN §5a: process sandboxes are contained where the host allows it. Where it does not, the
 * daemon says so, and with open registration (anyone may run code) starts only if the operator
 * has accepted it.
 */
async function checkContainment(runtime: ProcessRuntime, config: Config, log: Logger): Promise<void> {
  const containment = await runtime.prepare();
  if (!containment.namespaces) {
    log.warn({ reasons: containment.reasons }, "process sandboxes run uncontained: with the daemon's uid, file system, processes and network (DESIGN §5a)");
    if (config.registration === "open" && !config.processUncontained) {
      throw new ConfigError(
        "HYPERVISOR_PROCESS_UNCONTAINED",
        `accept with HYPERVISOR_REGISTRATION=open, as this host cannot contain process sandboxes (${containment.reasons.join("; ")}); ` +
          "or register users by invite, or use HYPERVISOR_RUNTIME=podman",
        undefined,
      );
    }
    return;
  }
  if (!containment.loopbackFenced) {
    log.warn(
      { reasons: containment.reasons },
      "process sandboxes can connect to the hypervisor's listeners and each other's ports on this host; use the podman runtime to isolate tenants' networks",
    );
  }
  log.info({ ownUid: containment.ownUid, loopbackFenced: containment.loopbackFenced }, "process sandboxes contained (bubblewrap)");
}

/**
 * Adoption needs the runtime; when it is down at boot the daemon still starts (readyz says
 * why) and keeps trying, and the manager's inspect-before-create prevents duplicates meanwhile.
 */
async function adoptUntilDone(services: Services): Promise<{ cancel(): void }> {
  let timer: NodeJS.Timeout | undefined;
  let cancelled = false;
  const attempt = () =>
    services.manager.adopt().then(
      () => undefined,
      (err: unknown) => {
        services.log.warn({ err: (err as Error).message }, "adoption failed; retrying");
        if (!cancelled) timer = setTimeout(attempt, ADOPT_RETRY_MS).unref();
      },
    );
  await attempt();
  return {
    cancel() {
      cancelled = true;
      clearTimeout(timer);
    },
  };
}

/** Binds `at`, or listens on a descriptor passed by systemd (net's `server.listen(handle)` with `{ fd }`). */
function listen(server: Server, at: ListenOptions | { fd: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(at, () => {
      server.off("error", reject);
      resolve();
    });
  });
}

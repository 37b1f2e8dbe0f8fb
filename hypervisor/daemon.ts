import { getRequestListener } from "@hono/node-server";
import { chmodSync, mkdirSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { dirname } from "node:path";
import type { Logger } from "pino";
import type { Config, ListenAddress } from "./config.js";
import { PublicProxy } from "../proxy/public-proxy.js";
import { sessionTokens } from "../proxy/cookies.js";
import { prepareStateDir } from "./db/state-dir.js";
import { createOperatorApp } from "./operator/operator-app.js";
import { createPublicApp } from "./public-app.js";
import type { ContainerRuntime } from "./runtime/container-runtime.js";
import { createServices, type Services } from "./services.js";

export interface Daemon {
  services: Services;
  proxy: PublicProxy;
  publicAddress: AddressInfo;
  operatorSocket: string;
  operatorAddress: AddressInfo | undefined;
  /** Stops listening and closes state; sandboxes keep running. */
  close(): Promise<void>;
}

const ADOPT_RETRY_MS = 2000;

/** Builds the services and opens both listeners. `main.ts` and the integration tests call this. */
export async function startDaemon(config: Config, log: Logger, runtime?: ContainerRuntime): Promise<Daemon> {
  prepareStateDir(config.stateDir);
  const services = createServices(config, log, runtime);
  // Adopt before serving, so the first requests already see what runs.
  const adoption = await adoptUntilDone(services);

  const { metrics } = services;
  const proxy = new PublicProxy({
    authenticate: (cookie) => {
      const session = services.sessions.authenticate(cookie);
      // Metrics: a session cookie the store refused (unknown, expired, revoked); no cost on success.
      if (!session && sessionTokens(cookie).length > 0) metrics.authFailure("session");
      return session;
    },
    targets: services.manager,
    routes: services.routing,
    app: getRequestListener(createPublicApp(services).fetch),
    publicOrigin: config.publicOrigin,
    trustedProxies: config.trustedProxies,
    log,
    drainMs: config.drainMs,
    observe: metrics.observeProxied,
  });
  metrics.readWebSocketsFrom(() => proxy.websockets.openCount());
  const publicServer = createServer(proxy.handleRequest);
  publicServer.on("upgrade", proxy.handleUpgrade);
  const publicAddress = await listenTcp(publicServer, config.listen);

  const operatorServer = createServer(getRequestListener(createOperatorApp(services, "unix").fetch));
  mkdirSync(dirname(config.operatorSocket), { recursive: true, mode: 0o700 });
  // A socket file left by a killed predecessor would make listen() fail with EADDRINUSE.
  rmSync(config.operatorSocket, { force: true });
  await new Promise<void>((resolve, reject) => {
    operatorServer.once("error", reject);
    operatorServer.listen(config.operatorSocket, resolve);
  });
  chmodSync(config.operatorSocket, 0o600);

  let operatorTcp: Server | undefined;
  let operatorAddress: AddressInfo | undefined;
  if (config.operatorListen) {
    operatorTcp = createServer(getRequestListener(createOperatorApp(services, "tcp").fetch));
    operatorAddress = await listenTcp(operatorTcp, config.operatorListen);
  }
  services.manager.startIdleSweep();
  services.knownGood.start();
  log.info(
    { listen: `${publicAddress.address}:${publicAddress.port}`, operatorSocket: config.operatorSocket, runtime: services.runtime.kind },
    "hypervisor started",
  );

  return {
    services,
    proxy,
    publicAddress,
    operatorSocket: config.operatorSocket,
    operatorAddress,
    async close() {
      adoption.cancel();
      services.manager.close();
      services.knownGood.close();
      proxy.close();
      await Promise.all([publicServer, operatorServer, operatorTcp].filter((s): s is Server => !!s).map(closeServer));
      services.refusals.flush();
      services.db.close();
      log.info("hypervisor stopped; sandboxes left running");
    },
  };
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

function listenTcp(server: Server, at: ListenAddress): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(at.port, at.host, () => resolve(server.address() as AddressInfo));
  });
}

/** Open keep-alive and upgraded sockets would hold close() forever: end them. */
function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

import { getRequestListener } from "@hono/node-server";
import { chmodSync, mkdirSync } from "node:fs";
import { createServer, type RequestListener, type Server } from "node:http";
import type { AddressInfo, ListenOptions } from "node:net";
import { dirname } from "node:path";
import type { Logger } from "pino";
import { ConfigError, type Config, type ConfigVariable } from "./config.js";
import { PublicProxy } from "../proxy/public-proxy.js";
import { ConnectionDrain } from "./http/connection-drain.js";
import { DaemonLock, removeStaleSocket } from "./db/daemon-lock.js";
import { prepareStateDir, refuseRuntimeSwitch } from "./db/state-dir.js";
import { createOperatorApp } from "./operator/operator-app.js";
import { BrowserPages } from "./pages/browser-pages.js";
import { createPublicApp } from "./public-app.js";
import type { ContainerRuntime } from "./runtime/container-runtime.js";
import type { Containment } from "./runtime/process/containment.js";
import type { EgressOptions, EgressStatus } from "./egress/egress.js";
import { memAvailable } from "./sandboxes/idle-tiers.js";
import { buildServices, type Services } from "./services.js";
import type { InheritedSockets } from "./socket-activation.js";

export interface Daemon {
  services: Services;
  proxy: PublicProxy;
  publicAddress: AddressInfo;
  operatorSocket: string;
  /** What the person who started the daemon should know, in sentences (containment gaps, a port mismatch). */
  notices: string[];
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
  /** Tests: the egress gateway's resolver and limits. */
  egress?: EgressOptions;
}

const ADOPT_RETRY_MS = 2000;
/** How often open WebSockets' sessions are checked for expiry: their last moment plus at most this. */
const SESSION_SWEEP_MS = 5000;

/** Builds the services and opens both listeners. `main.ts` and the integration tests call this. */
export async function startDaemon(config: Config, log: Logger, options: DaemonOptions = {}): Promise<Daemon> {
  prepareStateDir(config.stateDir);
  // Before anything else touches the state dir or the operator socket: they may be another daemon's.
  const lock = await DaemonLock.take(config.stateDir);
  try {
    return await startLocked(config, log, options, lock);
  } catch (err) {
    lock.release();
    throw err;
  }
}

async function startLocked(config: Config, log: Logger, { runtime, sockets = {}, egress }: DaemonOptions, lock: DaemonLock): Promise<Daemon> {
  refuseRuntimeSwitch(config.stateDir, runtime?.kind ?? config.runtime);
  const services = await buildServices(config, log, { runtime, egress });
  // Plain sentences for the person who started the daemon (main.ts prints them on its terminal);
  // each is logged as a structured line too.
  const notices: string[] = [];
  try {
    if (services.checks.containment) await checkContainment(services.checks.containment, config, log, notices);
    checkEgress(services.egress.status, config, log, notices);
    await checkMemoryReading(config);
  } catch (err) {
    await services.egress.close();
    services.close();
    throw err;
  }
  services.start();
  // Adopt before serving, so the first requests already see what runs.
  const adoption = await adoptUntilDone(services);

  const { metrics } = services;
  const pages = new BrowserPages({ publicOrigin: config.publicOrigin, sandboxOrigins: services.sandboxOrigins !== undefined });
  const proxy = new PublicProxy({
    ...services.authGate,
    targets: services.manager,
    routes: services.routing,
    app: nodeListener(createPublicApp(services, pages).fetch),
    pages,
    publicOrigin: config.publicOrigin,
    ...(services.sandboxOrigins ? { sandboxes: { origins: services.sandboxOrigins, gate: services.sandboxGrants } } : {}),
    trustedProxies: config.trustedProxies,
    log,
    drainMs: config.drainMs,
    observe: metrics.observeProxied,
    userLimits: { requests: config.userMaxRequests, websockets: config.userMaxWebSockets },
    onLimited: (user, limit, source) => {
      metrics.limited(limit);
      services.refusals.record({ actor: user, action: "proxy.limited", target: limit, source, outcome: "refused", details: { status: 429 } });
    },
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
  await listen(publicServer, sockets.public !== undefined ? { fd: sockets.public } : config.listen, "HYPERVISOR_LISTEN");
  const publicAddress = publicServer.address();
  if (publicAddress === null || typeof publicAddress === "string") throw new Error("the socket passed as public is not a TCP socket");
  if (sockets.public !== undefined && config.listen.port !== 0 && config.listen.port !== publicAddress.port) {
    log.warn({ socket: publicAddress.port, HYPERVISOR_LISTEN: config.listen.port }, "the public socket passed by systemd is not on HYPERVISOR_LISTEN's port");
  }
  const mismatch = originMismatch(config.publicOrigin, publicAddress.port);
  if (mismatch !== undefined) {
    log.warn({ HYPERVISOR_PUBLIC_ORIGIN: config.publicOrigin.origin, port: publicAddress.port }, mismatch);
    notices.push(mismatch);
  }

  const operatorServer = createServer(nodeListener(createOperatorApp(services, "unix").fetch));
  drains.push(new ConnectionDrain(operatorServer));
  if (sockets.operator !== undefined) {
    // systemd made this socket file (SocketMode=0600) and owns it: not ours to remove or chmod.
    await listen(operatorServer, { fd: sockets.operator });
    if (operatorServer.address() !== null) throw new Error("the socket passed as operator is not a unix socket");
  } else {
    mkdirSync(dirname(config.operatorSocket), { recursive: true, mode: 0o700 });
    await removeStaleSocket(config.operatorSocket);
    await listen(operatorServer, { path: config.operatorSocket });
    chmodSync(config.operatorSocket, 0o600);
  }

  let operatorTcp: Server | undefined;
  let operatorAddress: AddressInfo | undefined;
  if (config.operatorListen) {
    operatorTcp = createServer(nodeListener(createOperatorApp(services, "tcp").fetch));
    drains.push(new ConnectionDrain(operatorTcp));
    await listen(operatorTcp, config.operatorListen, "HYPERVISOR_OPERATOR_LISTEN");
    operatorAddress = operatorTcp.address() as AddressInfo;
  }
  log.info(
    {
      url: config.publicOrigin.origin,
      listen: `${publicAddress.address}:${publicAddress.port}`,
      operatorSocket: config.operatorSocket,
      socketActivated: Object.keys(sockets),
      runtime: services.runtime.kind,
      egress: services.egress.status,
    },
    `hypervisor started: open ${config.publicOrigin.origin} in a browser`,
  );

  return {
    services,
    proxy,
    publicAddress,
    operatorSocket: config.operatorSocket,
    notices,
    operatorAddress,
    async close() {
      const began = performance.now();
      // With socket activation the kernel queues new connections for the next daemon from here on.
      const drained = Promise.all(drains.map((drain) => drain.close(config.shutdownGraceMs)));
      adoption.cancel();
      clearInterval(sessionSweep);
      services.stop();
      proxy.closeWebSockets();
      await drained;
      // Only now: requests in flight until a moment ago still needed the upstream pools and the database.
      proxy.close();
      // The gateway and the host's egress rules go with the daemon; sandboxes left running keep
      // their tokens (SQLite) for the next daemon, which brings the gateway back.
      await services.egress.close();
      services.close();
      // Last: the operator socket is closed (and its file removed), so the next daemon may take both.
      lock.release();
      log.info({ ms: Math.round(performance.now() - began) }, "hypervisor stopped; sandboxes left running");
    },
  };
}

/**
 * DESIGN §5a: process sandboxes are contained where the host allows it. Where it does not, the
 * daemon says so, and with open registration (anyone may run code) starts only if the operator
 * has accepted it.
 */
async function checkContainment(prepare: () => Promise<Containment>, config: Config, log: Logger, notices: string[]): Promise<void> {
  const containment = await prepare();
  // Which way every sandbox's disk holds here: a kernel quota, or the periodic measure alone.
  if (containment.disk) log.info({ disk: containment.disk.method }, containment.disk.note);
  // A sandbox that can connect to the hypervisor's listeners and its neighbours' ports is not
  // contained either: both gaps get the same sentence, the same refusal and the same way to accept.
  const gap = !containment.namespaces
    ? "process sandboxes run uncontained: with the daemon's uid, file system, processes and network"
    : !containment.loopbackFenced
      ? "process sandboxes have no network of their own: they can connect to the hypervisor's listeners and to each other's ports"
      : undefined;
  if (gap === undefined) {
    log.info({ ownUid: containment.ownUid, loopbackFenced: true }, "process sandboxes contained (bubblewrap)");
    // Contained, but some limit cannot hold (no cgroups, data beside the state dir): said, not refused.
    if (containment.reasons.length) log.warn({ reasons: containment.reasons }, "process sandboxes' limits have gaps");
    return;
  }
  log.warn({ reasons: containment.reasons, namespaces: containment.namespaces, loopbackFenced: containment.loopbackFenced }, gap);
  notices.push(`${gap} (${containment.reasons.join("; ")}).`);
  if (config.registration === "open" && !config.processUncontained) {
    throw new ConfigError(
      "HYPERVISOR_PROCESS_UNCONTAINED",
      `accept with HYPERVISOR_REGISTRATION=open, as ${gap} (${containment.reasons.join("; ")}); ` +
        "install what is missing (apt-get install bubblewrap iptables iproute2, as root), or register users by invite, or use HYPERVISOR_RUNTIME=podman",
      undefined,
    );
  }
}

/**
 * The memory reserve reads the host's available memory before every start: a daemon that cannot
 * (a /proc without /proc/meminfo, e.g. a unit's ProcSubset=pid) would refuse every start, so it
 * does not start at all, and says what to change.
 */
async function checkMemoryReading(config: Config): Promise<void> {
  if (config.memoryReserveBytes <= 0) return;
  try {
    await memAvailable();
  } catch (err) {
    throw new ConfigError(
      "HYPERVISOR_MEMORY_RESERVE",
      `0 (no reserve) when the host's available memory cannot be read (${(err as Error).message}); under systemd, no ProcSubset=pid`,
      String(config.memoryReserveBytes),
    );
  }
}

/**
 * DESIGN §5b: `open` egress is said as what it is, and egress the kernel cannot enforce as §5a
 * says of containment: a notice, and with open registration a refusal unless accepted.
 */
function checkEgress(status: EgressStatus, config: Config, log: Logger, notices: string[]): void {
  if (status.enforced && status.mode === "open") {
    log.warn({ egress: status }, "egress is open: sandboxes connect directly to the internet (never to this host, link-local or private ranges not allowed)");
    notices.push("Egress is open (HYPERVISOR_EGRESS=open): sandboxes connect directly to the internet, not only through the gateway.");
  }
  if (status.enforced) return;
  const gap = `sandboxes' egress (HYPERVISOR_EGRESS=${status.mode}) is not enforced: ${status.reason}`;
  log.warn({ egress: status }, gap);
  notices.push(`${gap}.`);
  if (config.registration === "open" && !config.processUncontained) {
    throw new ConfigError(
      "HYPERVISOR_PROCESS_UNCONTAINED",
      `accept with HYPERVISOR_REGISTRATION=open, as ${gap}; run the daemon as root or with CAP_NET_ADMIN (the units grant it), with iptables and iproute2`,
      undefined,
    );
  }
}

/**
 * A Hono app as node's request listener. The listener answers every failure itself (a 500 from
 * the app's onError or its own) and never rejects, so node may drop the promise it returns.
 */
function nodeListener(fetch: Parameters<typeof getRequestListener>[0]): RequestListener {
  const listener = getRequestListener(fetch);
  return (req, res) => void listener(req, res);
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
        // attempt() settles its own failure here, so its promise never rejects.
        if (!cancelled) timer = setTimeout(() => void attempt(), ADOPT_RETRY_MS).unref();
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

/**
 * Binds `at`, or listens on a descriptor passed by systemd (net's `server.listen(handle)` with
 * `{ fd }`). An address that cannot be bound is the operator's setting to change, so it is a
 * configuration error naming `variable`, not a crash.
 */
function listen(server: Server, at: ListenOptions | { fd: number }, variable?: ConfigVariable): Promise<void> {
  return new Promise((resolve, reject) => {
    const refuse = (err: NodeJS.ErrnoException) => {
      const why = err.code === "EADDRINUSE" ? "is already in use by another program" : err.code === "EACCES" ? "may not be bound by this user" : undefined;
      if (variable === undefined || why === undefined || !("port" in at)) return reject(err);
      const address = `${at.host?.includes(":") ? `[${at.host}]` : at.host}:${at.port}`;
      reject(new ConfigError(variable, `an address this daemon can listen on (${address} ${why}; stop that program or choose another port)`, address));
    };
    server.once("error", refuse);
    server.listen(at, () => {
      server.off("error", refuse);
      resolve();
    });
  });
}

/**
 * Passkeys and Origin checks use the public origin, so a browser must reach the listener at it.
 * On localhost no front can stand between them unless the operator made one: a different port
 * there is almost always a mistake, said in a sentence naming both variables. A TLS front on 443
 * before a listener on 8080 is the normal production case and is not localhost.
 */
function originMismatch(origin: URL, port: number): string | undefined {
  const host = origin.hostname;
  if (host !== "localhost" && !host.endsWith(".localhost")) return undefined;
  const originPort = Number(origin.port || (origin.protocol === "https:" ? 443 : 80));
  if (originPort === port) return undefined;
  return (
    `HYPERVISOR_PUBLIC_ORIGIN is ${origin.origin} but HYPERVISOR_LISTEN serves port ${port}: a browser opening ${origin.origin} reaches this daemon ` +
    `only through a front that forwards port ${originPort} to ${port}; without one, set just one of the two variables and the other follows.`
  );
}

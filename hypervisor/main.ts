import { ConfigError, configVariables, loadConfig } from "./config.js";
import { startDaemon } from "./daemon.js";
import { createLogger, terminalLog } from "./logger.js";
import { takeInheritedSockets } from "./socket-activation.js";

function refuseConfig(err: unknown): void {
  if (!(err instanceof ConfigError)) return;
  process.stderr.write(`hypervisor: invalid configuration: ${err.message}\n`);
  process.exit(2);
}

const USAGE = `Usage: node dist/hypervisor/main.js   (or: npm start)

Runs the hypervisor daemon. It takes no arguments: every setting is an environment variable,
read once at start (secrets from files). Drive a running daemon with hypervisorctl.

Variables (default):
${configVariables.map((v) => `  ${v.name.padEnd(32)} ${v.description}${v.default ? ` (${v.default})` : ""}`).join("\n")}
`;

const args = process.argv.slice(2);
if (args.includes("--help") || args.includes("-h")) {
  process.stdout.write(USAGE);
  process.exit(0);
}
if (args.length) {
  process.stderr.write(`hypervisor: unexpected argument '${args[0]}': settings are environment variables\n\n${USAGE}`);
  process.exit(2);
}

let config;
let sockets;
try {
  config = loadConfig();
  sockets = takeInheritedSockets(process.env, process.pid);
} catch (err) {
  refuseConfig(err);
  throw err;
}

// On a terminal a person reads the log: one readable line per event. Elsewhere (journald, a
// file, a pipe) the JSON lines stay, for machines to read.
const log = createLogger(config.logLevel, process.stdout.isTTY ? terminalLog() : undefined);
// Some settings are only wrong for this host (process sandboxes it cannot contain): the same exit.
const daemon = await startDaemon(config, log, { sockets }).catch((err: unknown) => {
  refuseConfig(err);
  log.fatal({ err }, "hypervisor failed to start");
  process.exit(1);
});

// For whoever started it by hand, in sentences: the structured log lines say the same, among others.
process.stderr.write(
  [
    `hypervisor: open ${config.publicOrigin.origin} in a browser; operator socket ${daemon.operatorSocket}`,
    ...daemon.notices.map((notice) => `hypervisor: warning: ${notice}`),
  ].join("\n") + "\n",
);

// SIGHUP: the egress routes file and secrets are read again (a rotated key needs no restart).
process.on("SIGHUP", () => {
  log.info({ signal: "SIGHUP" }, "reloading the egress routes");
  daemon.services.egressCredentials.reload();
});

let stopping = false;
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "shutting down");
    daemon.close().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, "shutdown failed");
        process.exit(1);
      },
    );
  });
}

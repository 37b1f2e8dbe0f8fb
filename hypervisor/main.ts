import { ConfigError, loadConfig } from "./config.js";
import { startDaemon } from "./daemon.js";
import { createLogger } from "./logger.js";
import { takeInheritedSockets } from "./socket-activation.js";

function refuseConfig(err: unknown): void {
  if (!(err instanceof ConfigError)) return;
  process.stderr.write(`hypervisor: invalid configuration: ${err.message}\n`);
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

const log = createLogger(config.logLevel);
// Some settings are only wrong for this host (process sandboxes it cannot contain): the same exit.
const daemon = await startDaemon(config, log, { sockets }).catch((err: unknown) => {
  refuseConfig(err);
  log.fatal({ err }, "hypervisor failed to start");
  process.exit(1);
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

import { ConfigError, loadConfig } from "./config.js";
import { startDaemon } from "./daemon.js";
import { createLogger } from "./logger.js";

let config;
try {
  config = loadConfig();
} catch (err) {
  if (err instanceof ConfigError) {
    process.stderr.write(`hypervisor: invalid configuration: ${err.message}\n`);
    process.exit(2);
  }
  throw err;
}

const log = createLogger(config.logLevel);
const daemon = await startDaemon(config, log).catch((err: unknown) => {
  // A setting that turns out wrong only at start (the state directory's owner or mode).
  if (err instanceof ConfigError) {
    process.stderr.write(`hypervisor: invalid configuration: ${err.message}\n`);
    process.exit(2);
  }
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

import { setTimeout as delay } from "node:timers/promises";
import { parseArgs } from "node:util";
import { createSandbox, type SandboxConfig } from "./app.js";
import { egressFromEnv } from "./egress-client.js";
import { logLine } from "./log.js";

/** Past this the process exits anyway: the hypervisor's stop timeout must never be the one that ends us. */
const SHUTDOWN_DEADLINE_MS = 1000;

interface ServerOptions extends SandboxConfig {
  port: number;
  slowStartMs: number;
}

function parseOptions(argv: string[], env: NodeJS.ProcessEnv): ServerOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      version: { type: "string", default: "1" },
      "fail-health": { type: "boolean", default: false },
      "rewrite-data": { type: "boolean", default: false },
      "slow-start-ms": { type: "string", default: "0" },
    },
    strict: true,
  });
  const version = values.version ?? "1";
  // It travels in the X-Sandbox-Version header, so it must be a valid header value.
  if (!/^[\x21-\x7e]+$/.test(version)) throw new Error(`--version must be printable ASCII without spaces, got ${JSON.stringify(version)}`);
  const slowStartMs = Number(values["slow-start-ms"]);
  if (!Number.isInteger(slowStartMs) || slowStartMs < 0) throw new Error("--slow-start-ms must be a non-negative integer");
  const port = Number(env.PORT || "8080");
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`PORT must be a port number, got ${JSON.stringify(env.PORT)}`);
  return {
    version,
    failHealth: values["fail-health"] ?? false,
    rewriteData: values["rewrite-data"] ?? false,
    slowStartMs,
    port,
    dataDir: env.DATA_DIR || "/data",
    user: env.HYPERVISOR_USER || null,
    slot: env.HYPERVISOR_SLOT || null,
    generation: env.HYPERVISOR_GENERATION || null,
    // A hypervisor older than HYPERVISOR_ACCOUNT_URL serves the page on the public origin's path.
    accountUrl: accountUrl(env.HYPERVISOR_ACCOUNT_URL),
    egress: egressFromEnv(env),
  };
}

/** Only an http(s) URL becomes the page's link: anything else falls back to the path. */
function accountUrl(given: string | undefined): string {
  try {
    const url = new URL(given ?? "");
    if (url.protocol === "http:" || url.protocol === "https:") return url.href;
  } catch {
    // Unset or not a URL.
  }
  return "/_hv/account";
}

async function main(): Promise<void> {
  let options: ServerOptions;
  try {
    options = parseOptions(process.argv.slice(2), process.env);
  } catch (error) {
    process.stderr.write(`sandbox: ${(error as Error).message}\n`);
    process.exit(2);
  }
  const sandbox = createSandbox(options);

  // Node as PID 1 (in a container) ignores SIGTERM unless a handler is installed.
  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    logLine({ msg: "stopping", signal });
    setTimeout(() => process.exit(0), SHUTDOWN_DEADLINE_MS).unref();
    sandbox.close().then(
      () => process.exit(0),
      (error: Error) => {
        logLine({ msg: "unclean stop", error: error.message });
        process.exit(0);
      },
    );
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);

  if (options.slowStartMs > 0) await delay(options.slowStartMs);
  if (stopping) return;
  // In a container the sandbox owns its network namespace; a process sandbox shares the host's,
  // so the process runtime passes HOST=127.0.0.1 to keep it off the network.
  const port = await sandbox.listen(options.port, process.env.HOST || "0.0.0.0");
  logLine({ msg: "listening", port, version: options.version, failHealth: options.failHealth, dataDir: options.dataDir });
}

main().catch((error: Error) => {
  process.stderr.write(`sandbox: ${error.stack ?? error.message}\n`);
  process.exit(1);
});

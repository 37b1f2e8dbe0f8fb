import { AsyncLocalStorage } from "node:async_hooks";
import { pino, type Logger } from "pino";
import pretty from "pino-pretty";

export type { Logger };

/**
 * The request a piece of work is done for. A service deep below a route (the sandbox manager
 * starting a sandbox, a release flipping a route) logs with its own logger; every line it writes
 * while serving a request still names that request's id, so one call can be followed through the
 * whole log.
 */
const requestScope = new AsyncLocalStorage<{ requestId: string }>();

/** Runs `work` as part of the request `requestId`: every log line written meanwhile names it. */
export function inRequest<T>(requestId: string, work: () => T): T {
  return requestScope.run({ requestId }, work);
}

/** JSON lines to stdout; events, not sentences. */
export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: { service: "hypervisor" },
      timestamp: pino.stdTimeFunctions.isoTime,
      mixin: () => requestScope.getStore() ?? {},
      redact: { paths: ["token", "cookie", "authorization", "*.token", "*.cookie", "*.authorization"], remove: true },
    },
    destination ?? process.stdout,
  );
}

/**
 * The same events as one readable line each, for a person at a terminal: time, level, message,
 * then the fields. Synchronous, so a line is on the screen before a fatal exit.
 */
export function terminalLog(): NodeJS.WritableStream {
  return pretty({ sync: true, colorize: true, translateTime: "HH:MM:ss", ignore: "pid,hostname,service", singleLine: true });
}

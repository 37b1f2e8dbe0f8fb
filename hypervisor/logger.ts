import { pino, type Logger } from "pino";
import pretty from "pino-pretty";

export type { Logger };

/** JSON lines to stdout; events, not sentences. */
export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: { service: "hypervisor" },
      timestamp: pino.stdTimeFunctions.isoTime,
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

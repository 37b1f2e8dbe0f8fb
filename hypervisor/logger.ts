import { pino, type Logger } from "pino";

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

import { request } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import type { Endpoint } from "../../proxy/target.js";
import type { HealthAnswer, HealthProbe } from "../runtime/container-runtime.js";

const PROBE_TIMEOUT_MS = 1000;
/**
 * While a start waits for health, the pause after each failed probe: 50 ms, doubling, at most 1 s
 * (docs/sandbox-contract.md). A sandbox that never becomes healthy is asked about once a second,
 * not dozens of times, and one that is ready in 100 ms is still seen within 50 ms.
 */
export const PROBE_BACKOFF_MS = { first: 50, max: 1000 } as const;
/** Liveness costs a runtime call: asked at most this often while waiting. */
const ALIVE_CHECK_EVERY_MS = 500;
/** What of a failed answer's body is kept for the operator: enough to read a reason. */
const BODY_EXCERPT_CHARS = 120;

/** Probes under way, by endpoint: concurrent askers of one sandbox share one request. */
const inFlight = new Map<string, Promise<HealthAnswer>>();

/**
 * One GET /health; healthy only for a 2xx answer within the probe timeout. Concurrent checks of
 * one endpoint share a request, so however many callers ask, a sandbox sees one probe at a time.
 */
export function checkHealth(endpoint: Endpoint, timeoutMs = PROBE_TIMEOUT_MS): Promise<HealthAnswer> {
  const k = `${endpoint.host}:${endpoint.port}`;
  let pending = inFlight.get(k);
  if (!pending) {
    pending = askHealth(endpoint, timeoutMs).finally(() => inFlight.delete(k));
    inFlight.set(k, pending);
  }
  return pending;
}

function askHealth(endpoint: Endpoint, timeoutMs: number): Promise<HealthAnswer> {
  return new Promise((resolve) => {
    const req = request({ host: endpoint.host, port: endpoint.port, path: "/health", method: "GET", timeout: timeoutMs, agent: false }, (res) => {
      const status = res.statusCode ?? 0;
      if (status >= 200 && status < 300) {
        res.resume();
        resolve({ healthy: true, said: `HTTP ${status}` });
        return;
      }
      // The body of a refusal often says why (a missing file, a port in use): its start only.
      let body = "";
      const done = () => {
        const excerpt = printable(body);
        resolve({ healthy: false, said: `HTTP ${status}${excerpt ? `: ${excerpt}` : ""}` });
      };
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        body += chunk;
        if (body.length > BODY_EXCERPT_CHARS * 4) res.destroy();
      });
      res.on("end", done);
      res.on("close", done);
      res.on("error", done);
    });
    req.on("timeout", () => {
      resolve({ healthy: false, said: `no answer within ${timeoutMs} ms` });
      req.destroy();
    });
    req.on("error", (err: NodeJS.ErrnoException) => resolve({ healthy: false, said: connectionError(err) }));
    req.end();
  });
}

/** The sandbox wrote it: one line of printable ASCII, so it cannot move a terminal's cursor or forge a line. */
function printable(body: string): string {
  const line = body.replace(/[^\x20-\x7e]+/g, " ").replace(/ {2,}/g, " ").trim();
  return line.length > BODY_EXCERPT_CHARS ? `${line.slice(0, BODY_EXCERPT_CHARS)}...` : line;
}

function connectionError(err: NodeJS.ErrnoException): string {
  if (err.code === "ECONNREFUSED") return "connection refused (nothing listens on its port yet)";
  if (err.code === "ECONNRESET") return "connection reset before an answer";
  return `connection failed (${err.code ?? err.message})`;
}

/** One probe, as a yes or no. */
export async function probeHealth(endpoint: Endpoint, timeoutMs = PROBE_TIMEOUT_MS): Promise<boolean> {
  return (await checkHealth(endpoint, timeoutMs)).healthy;
}

export const httpHealthProbe: HealthProbe = { probe: probeHealth, check: checkHealth };

/**
 * Probes (by default GET /health) until it answers healthy, the deadline passes, or `stillAlive`
 * says the sandbox died (no point waiting out the deadline for a process that exited). Between
 * failed probes it backs off (PROBE_BACKOFF_MS).
 */
export async function waitHealthy(
  endpoint: Endpoint,
  deadline: number,
  stillAlive: () => Promise<boolean> = async () => true,
  probe: HealthProbe = httpHealthProbe,
  /** Told the number of each failed probe and what it answered, for progress reports and the timeout's message. */
  onFailedProbe?: (attempts: number, answer: HealthAnswer) => void,
): Promise<"healthy" | "timeout" | "exited"> {
  let polls = 0;
  let pause: number = PROBE_BACKOFF_MS.first;
  let aliveCheckedAt = Date.now();
  while (Date.now() < deadline) {
    const answer = await probe.check(endpoint, Math.min(PROBE_TIMEOUT_MS, Math.max(1, deadline - Date.now())));
    if (answer.healthy) return "healthy";
    onFailedProbe?.(++polls, answer);
    if (Date.now() - aliveCheckedAt >= ALIVE_CHECK_EVERY_MS) {
      if (!(await stillAlive())) return "exited";
      aliveCheckedAt = Date.now();
    }
    const left = deadline - Date.now();
    if (left <= 0) break;
    await sleep(Math.min(pause, left));
    pause = Math.min(pause * 2, PROBE_BACKOFF_MS.max);
  }
  return "timeout";
}

import { request } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import type { Endpoint } from "../../proxy/target.js";
import type { HealthProbe } from "../runtime/container-runtime.js";

const PROBE_TIMEOUT_MS = 1000;
const POLL_INTERVAL_MS = 25;

/** One GET /health; true only for a 2xx answer within the probe timeout. */
export function probeHealth(endpoint: Endpoint, timeoutMs = PROBE_TIMEOUT_MS): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ host: endpoint.host, port: endpoint.port, path: "/health", method: "GET", timeout: timeoutMs, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode !== undefined && res.statusCode >= 200 && res.statusCode < 300);
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(false));
    req.end();
  });
}

export const httpHealthProbe: HealthProbe = { probe: probeHealth };

/**
 * Polls the probe (by default GET /health) until it answers healthy, the deadline passes, or
 * `stillAlive` says the sandbox died (no point waiting out the deadline for a process that exited).
 */
export async function waitHealthy(
  endpoint: Endpoint,
  deadline: number,
  stillAlive: () => Promise<boolean> = async () => true,
  probe: HealthProbe = httpHealthProbe,
  /** Told the number of each failed probe, for progress reports. */
  onFailedProbe?: (attempts: number) => void,
): Promise<"healthy" | "timeout" | "exited"> {
  let polls = 0;
  while (Date.now() < deadline) {
    if (await probe.probe(endpoint, Math.min(PROBE_TIMEOUT_MS, Math.max(1, deadline - Date.now())))) return "healthy";
    onFailedProbe?.(polls + 1);
    // Checking liveness costs a runtime call: every 20th poll (~0.5 s) is often enough.
    if (++polls % 20 === 0 && !(await stillAlive())) return "exited";
    await sleep(POLL_INTERVAL_MS);
  }
  return "timeout";
}

import { Pool, type Dispatcher } from "undici";
import type { Endpoint } from "./target.js";

/** Pools idle this long are closed: their sandbox was stopped or moved to another port. */
const IDLE_POOL_MS = 60_000;
/**
 * How long a sandbox may keep a request without answering (headers), and a response without
 * sending a byte (body, between chunks), before the proxy gives the request up: 502 before the
 * headers, a cut response after. Five minutes: a long poll waits for its headers at most that
 * long, and a server-sent event stream sends something (an event or a `:` comment, WHATWG HTML
 * §9.2) well within it, as browsers and intermediaries expect. A request that is only hung ends,
 * so it cannot hold its user's share of HYPERVISOR_USER_MAX_REQUESTS for ever.
 */
export const UPSTREAM_IDLE_MS = 300_000;

/**
 * Keep-alive connection pools to sandboxes, one per endpoint. undici's dispatcher is the
 * upstream client because it costs markedly less per request than node:http's client on the
 * hot path (measured in `npm run bench`); streaming and backpressure stay in our handler.
 */
export class UpstreamPools {
  private readonly pools = new Map<string, { pool: Pool; lastUsed: number }>();
  private readonly sweeper: NodeJS.Timeout;

  constructor() {
    this.sweeper = setInterval(() => this.closeIdle(), IDLE_POOL_MS);
    this.sweeper.unref();
  }

  dispatch(endpoint: Endpoint, options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandlers): void {
    const key = `${endpoint.host}:${endpoint.port}`;
    let entry = this.pools.get(key);
    if (!entry) {
      entry = {
        pool: new Pool(`http://${key}`, {
          // Below the reference sandbox's own keep-alive timeout (65 s), so we never reuse a
          // connection it is closing.
          keepAliveTimeout: 30_000,
          keepAliveMaxTimeout: 30_000,
          bodyTimeout: UPSTREAM_IDLE_MS,
          headersTimeout: UPSTREAM_IDLE_MS,
        }),
        lastUsed: 0,
      };
      this.pools.set(key, entry);
    }
    entry.lastUsed = Date.now();
    entry.pool.dispatch(options, handler);
  }

  close(): void {
    clearInterval(this.sweeper);
    for (const { pool } of this.pools.values()) void pool.destroy();
    this.pools.clear();
  }

  private closeIdle(): void {
    const cutoff = Date.now() - IDLE_POOL_MS;
    for (const [key, entry] of this.pools) {
      if (entry.lastUsed < cutoff) {
        this.pools.delete(key);
        void entry.pool.close();
      }
    }
  }
}

// A user's traffic from outside the box, through its TLS front (nginx in the box, reached over
// the veth): keep-alive HTTPS requests (the WebSocket that reconnects after 1012 is
// test/helpers/ws-client.ts's, given wsOptions()). Names resolve to the box's address; the
// certificate is checked against the rehearsal's own.
import { Agent, request } from "node:https";
import type { LookupFunction } from "node:net";

export interface Endpoint {
  /** The box's address, where every name of the site resolves. */
  address: string;
  /** The rehearsal's certificate, the only one trusted. */
  ca: string;
}

export function lookupTo(address: string): LookupFunction {
  return ((_host: string, options: { all?: boolean }, callback: (...args: unknown[]) => void) => {
    if (options?.all) callback(null, [{ address, family: 4 }]);
    else callback(null, address, 4);
  }) as unknown as LookupFunction;
}

/** A WebSocket's options for the box: its address for every name, the rehearsal's certificate only. */
export function wsOptions(endpoint: Endpoint): { ca: string; lookup: LookupFunction } {
  return { ca: endpoint.ca, lookup: lookupTo(endpoint.address) };
}

export interface Sample {
  at: number;
  ms: number;
  status: number;
  error?: string;
}

/** Sequential keep-alive GETs of `url` with `cookie` until stopped; one loop is one client. */
export class HttpsLoop {
  readonly samples: Sample[] = [];
  private running = true;
  private done: Promise<void> | undefined;
  private readonly agent: Agent;

  constructor(
    endpoint: Endpoint,
    private readonly url: string,
    private readonly cookie: string,
  ) {
    this.agent = new Agent({ keepAlive: true, maxSockets: 1, ca: endpoint.ca, lookup: lookupTo(endpoint.address) });
  }

  start(): this {
    this.done = (async () => {
      while (this.running) this.samples.push(await get(this.url, { agent: this.agent, cookie: this.cookie }));
    })();
    return this;
  }

  async stop(): Promise<Sample[]> {
    this.running = false;
    await this.done;
    this.agent.destroy();
    return this.samples;
  }
}

/** One GET; never rejects (a failure is a sample with status 0 and the error). */
export function get(url: string, options: { agent?: Agent; endpoint?: Endpoint; cookie?: string; timeoutMs?: number }): Promise<Sample & { body: string }> {
  const at = performance.now();
  return new Promise((resolve) => {
    const done = (status: number, body: string, error?: string) => resolve({ at, ms: performance.now() - at, status, body, ...(error && { error }) });
    const req = request(
      url,
      {
        agent: options.agent,
        ...(options.endpoint && { ca: options.endpoint.ca, lookup: lookupTo(options.endpoint.address) }),
        headers: options.cookie ? { cookie: options.cookie } : {},
        timeout: options.timeoutMs ?? 30_000,
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8").on("data", (c: string) => (body += c));
        res.on("end", () => done(res.statusCode ?? 0, body));
        res.on("error", (err) => done(0, body, err.message));
      },
    );
    req.on("timeout", () => req.destroy(new Error("timed out")));
    req.on("error", (err) => done(0, "", err.message));
    req.end();
  });
}

// A user's traffic from outside the box, through its TLS front (nginx in the box, reached over
// the veth): keep-alive HTTPS requests and a WebSocket that reconnects after 1012, as a browser
// application would. Names resolve to the box's address; the certificate is checked against the
// rehearsal's own.
import { Agent, request } from "node:https";
import type { LookupFunction } from "node:net";
import { WebSocket } from "ws";

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

/**
 * A WebSocket to the sandbox's echo endpoint that reconnects when closed with 1012 (Service
 * Restart), sending one message per connection and counting its echo.
 */
export class ReconnectingEcho {
  readonly closeCodes: number[] = [];
  readonly errors: string[] = [];
  opens = 0;
  echoes = 0;
  private ws: WebSocket | undefined;
  private stopped = false;

  constructor(
    private readonly endpoint: Endpoint,
    private readonly url: string,
    private readonly cookie: string,
  ) {}

  start(): Promise<this> {
    return new Promise((resolve, reject) => this.connect(() => resolve(this), reject));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const ws = this.ws;
    if (!ws || ws.readyState === WebSocket.CLOSED) return;
    const closed = new Promise((resolve) => ws.once("close", resolve));
    ws.close(1000, "done");
    await closed;
  }

  private connect(opened?: () => void, failed?: (err: Error) => void): void {
    const ws = new WebSocket(this.url, {
      ca: this.endpoint.ca,
      lookup: lookupTo(this.endpoint.address),
      origin: new URL(this.url).origin.replace(/^ws/, "http"),
      headers: { cookie: this.cookie },
    });
    this.ws = ws;
    ws.once("open", () => {
      this.opens++;
      ws.send(`hello ${this.opens}`);
      opened?.();
    });
    ws.on("message", () => this.echoes++);
    ws.on("unexpected-response", (_req, res) => {
      this.errors.push(`upgrade answered ${res.statusCode}`);
      failed?.(new Error(`upgrade answered ${res.statusCode}`));
    });
    ws.on("error", (err) => {
      this.errors.push(err.message);
      failed?.(err);
    });
    ws.once("close", (code) => {
      this.closeCodes.push(code);
      if (code === 1012 && !this.stopped) this.connect();
    });
  }
}

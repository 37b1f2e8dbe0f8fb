import { WebSocket, type ClientOptions } from "ws";

export function openWs(url: string, path: string, headers: Record<string, string>): Promise<WebSocket> {
  const ws = new WebSocket(`${url.replace("http", "ws")}${path}`, { headers });
  return new Promise((resolve, reject) => {
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
}

/** The HTTP status an upgrade gets: 101 when it opens, the refusal's status otherwise. */
export function upgradeStatus(wsUrl: string, headers: Record<string, string>): Promise<number> {
  const ws = new WebSocket(wsUrl, { headers });
  return new Promise((resolve) => {
    ws.once("unexpected-response", (_req, res) => {
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.once("open", () => {
      resolve(101);
      ws.close();
    });
    ws.once("error", () => resolve(-1));
  });
}

/**
 * A WebSocket client that reconnects when the server closes with 1012 "Service Restart" (RFC 6455
 * §7.4.1, IANA registry), as an application in a browser would. Each connection sends one message
 * and expects its echo (the sandbox's /ws/echo), which shows the new connection really works.
 */
export class ReconnectingSocket {
  /** Every close code received, in order; the last is 1000 once stopped. */
  readonly closeCodes: number[] = [];
  readonly errors: string[] = [];
  opens = 0;
  echoes = 0;
  private ws: WebSocket | undefined;
  private stopped = false;
  private opened: (() => void) | undefined;
  private failed: ((err: Error) => void) | undefined;

  /** `options`: the socket's other options, e.g. `ca` and `lookup` for a TLS front reached by address. */
  constructor(
    private readonly url: string,
    private readonly path: string,
    private readonly headers: Record<string, string>,
    private readonly options: Omit<ClientOptions, "headers"> = {},
  ) {}

  /** Resolves once the first connection is open; rejects when that one fails. */
  start(): Promise<this> {
    return new Promise((resolve, reject) => {
      this.opened = () => resolve(this);
      this.failed = reject;
      this.connect();
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const ws = this.ws;
    if (!ws || ws.readyState === WebSocket.CLOSED) return;
    const closed = new Promise((resolve) => ws.once("close", resolve));
    ws.close(1000, "done");
    await closed;
  }

  private connect(): void {
    const ws = new WebSocket(`${this.url.replace("http", "ws")}${this.path}`, { ...this.options, headers: this.headers });
    this.ws = ws;
    ws.once("open", () => {
      this.opens++;
      ws.send(`hello ${this.opens}`);
      this.opened?.();
      this.opened = this.failed = undefined;
    });
    ws.on("message", () => this.echoes++);
    ws.on("error", (err) => {
      this.errors.push(err.message);
      this.failed?.(err);
      this.opened = this.failed = undefined;
    });
    ws.once("close", (code) => {
      this.closeCodes.push(code);
      if (code === 1012 && !this.stopped) this.connect();
    });
  }
}

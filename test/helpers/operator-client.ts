import type { Agent } from "node:http";
import { OperatorConnection } from "../../hypervisor/hypervisorctl/operator-connection.js";

export interface OperatorResponse<T = any> {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: T;
  ms: number;
}

export interface SendOptions {
  /** Add `content-type: application/json` to a request with a body (default), or send the headers exactly as given. */
  bare?: boolean;
  /** Node's global agent unless given; `false` for a connection of its own. */
  agent?: Agent | false;
  timeoutMs?: number;
}

/**
 * The operator API for tests, over its unix socket (or TCP with a token): hypervisorctl's
 * connection, answering with any status as it came (the body parsed as JSON where it is JSON).
 */
export class OperatorClient {
  private readonly connection: OperatorConnection;

  constructor(target: { socketPath: string } | { host: string; port: number; token?: string }) {
    this.connection = new OperatorConnection(
      "socketPath" in target ? { socketPath: target.socketPath } : { url: new URL(`http://${target.host}:${target.port}`), token: target.token },
    );
  }

  get<T = any>(path: string): Promise<OperatorResponse<T>> {
    return this.send("GET", path);
  }

  post<T = any>(path: string, body?: unknown): Promise<OperatorResponse<T>> {
    return this.send("POST", path, body === undefined ? undefined : JSON.stringify(body));
  }

  /** Sends a raw body as given, for tests of malformed input. */
  async send<T = any>(
    method: string,
    path: string,
    raw?: string | Buffer,
    headers: Record<string, string> = {},
    options: SendOptions = {},
  ): Promise<OperatorResponse<T>> {
    const began = Date.now();
    const json: Record<string, string> = raw !== undefined && !options.bare ? { "content-type": "application/json" } : {};
    const res = await this.connection.send(method, path, { body: raw, headers: { ...json, ...headers }, agent: options.agent, timeoutMs: options.timeoutMs });
    let body: unknown = res.raw;
    try {
      body = JSON.parse(res.raw);
    } catch {
      // not JSON: the test sees the text
    }
    return { status: res.status, headers: res.headers, body: body as T, ms: Date.now() - began };
  }
}

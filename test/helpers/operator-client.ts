import { request } from "node:http";

export interface OperatorResponse<T = any> {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: T;
  ms: number;
}

/** A plain HTTP client for the operator API over its unix socket (or TCP with a token). */
export class OperatorClient {
  constructor(private readonly target: { socketPath: string } | { host: string; port: number; token?: string }) {}

  get<T = any>(path: string): Promise<OperatorResponse<T>> {
    return this.send("GET", path);
  }

  post<T = any>(path: string, body?: unknown): Promise<OperatorResponse<T>> {
    return this.send("POST", path, body === undefined ? undefined : JSON.stringify(body));
  }

  /** Sends a raw body as given, for tests of malformed input. */
  send<T = any>(method: string, path: string, raw?: string | Buffer, headers: Record<string, string> = {}): Promise<OperatorResponse<T>> {
    const began = Date.now();
    const auth = "token" in this.target && this.target.token ? { authorization: `Bearer ${this.target.token}` } : {};
    const where = "socketPath" in this.target ? { socketPath: this.target.socketPath } : { host: this.target.host, port: this.target.port };
    return new Promise((resolve, reject) => {
      const req = request(
        { ...where, method, path, headers: { ...(raw !== undefined ? { "content-type": "application/json" } : {}), ...auth, ...headers } },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            let body: unknown = text;
            try {
              body = JSON.parse(text);
            } catch {
              // not JSON: the test sees the text
            }
            resolve({ status: res.statusCode ?? 0, headers: res.headers, body: body as T, ms: Date.now() - began });
          });
        },
      );
      req.on("error", reject);
      req.end(raw);
    });
  }
}

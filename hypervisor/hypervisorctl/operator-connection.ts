import { request as httpRequest, type Agent, type IncomingHttpHeaders, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import type { Writable } from "node:stream";
import { pipeline } from "node:stream/promises";

/** Where the operator API is: its unix socket (guarded by file mode) or TCP with the bearer token. */
export type OperatorTarget =
  { socketPath: string; /** How the path was found, for the message when nothing is there. */ origin?: string } | { url: URL; token?: string };

/** The API answered with its error shape `{ error: { code, message, requestId } }`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly requestId: string,
    /** The response body as received, for --json. */
    readonly raw: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** The API could not be reached, or answered something that is not the API. */
export class ConnectionError extends Error {
  override name = "ConnectionError";
}

export interface ApiResponse<T> {
  status: number;
  body: T;
  /** The body as received, printed as is by --json. */
  raw: string;
}

/** One request exactly as given: the connection adds nothing but the bearer token over TCP (unless `headers` carry their own). */
export interface RawRequest {
  body?: string | Buffer;
  headers?: Record<string, string | number>;
  /** Node's global agent unless given; `false` for a connection of its own. */
  agent?: Agent | false;
  /** Give up (a ConnectionError) when no answer has come within this long. */
  timeoutMs?: number;
}

export interface RawResponse {
  status: number;
  headers: IncomingHttpHeaders;
  /** The body as received. */
  raw: string;
}

const NDJSON = "application/x-ndjson";

/** A small HTTP client for the operator API, speaking JSON, NDJSON progress and plain text. */
export class OperatorConnection {
  constructor(readonly target: OperatorTarget) {}

  /** Where requests go, for messages. */
  describe(): string {
    if (!("socketPath" in this.target)) return this.target.url.origin;
    return this.target.origin ? `${this.target.socketPath} (from ${this.target.origin})` : this.target.socketPath;
  }

  /** Sends a request as given and hands back the answer, whatever its status: for callers that judge it themselves. */
  async send(method: string, path: string, request: RawRequest = {}): Promise<RawResponse> {
    const res = await this.open(method, path, request);
    return { status: res.statusCode ?? 0, headers: res.headers, raw: await readAll(res) };
  }

  async json<T = any>(method: "GET" | "POST" | "DELETE", path: string, body?: unknown): Promise<ApiResponse<T>> {
    const res = await this.open(method, path, asJson(body, "application/json"));
    const raw = await readAll(res);
    // 204: done, nothing to say (DELETE).
    if (res.statusCode === 204) return { status: 204, body: undefined as T, raw: "" };
    return { status: res.statusCode ?? 0, body: parseJson<T>(raw, res, this.describe()), raw };
  }

  async text(path: string): Promise<string> {
    const res = await this.open("GET", path, asJson(undefined, "text/plain"));
    const raw = await readAll(res);
    if ((res.statusCode ?? 0) >= 400) parseJson(raw, res, this.describe());
    return raw;
  }

  /**
   * GETs a text/plain answer and hands it over chunk by chunk as it arrives (a followed log);
   * an error answer is thrown as an ApiError before anything is handed over.
   */
  async textStream(path: string, onText: (text: string) => void): Promise<void> {
    const res = await this.open("GET", path, asJson(undefined, "text/plain"));
    await this.refuseError(res);
    await receive(res, `the stream from ${path}`, onText);
  }

  /**
   * POSTs and streams a binary answer of type `accept` into `into` (ended when done); an error
   * answer is thrown as an ApiError before anything is written. Returns the answer's headers.
   */
  async download(path: string, accept: string, into: Writable, method: "GET" | "POST" = "POST"): Promise<IncomingHttpHeaders> {
    const res = await this.open(method, path, asJson(undefined, accept));
    await this.refuseError(res);
    if (!String(res.headers["content-type"] ?? "").startsWith(accept)) {
      res.resume();
      throw new ConnectionError(`expected ${accept} from ${path}, got ${res.headers["content-type"] ?? "no content type"}`);
    }
    await pipeline(res, into).catch((err: unknown) => {
      throw err instanceof ConnectionError ? err : new ConnectionError(`the download from ${path} broke off: ${(err as Error).message}`);
    });
    return res.headers;
  }

  /**
   * Asks for NDJSON progress and hands each line to `onLine` as it arrives. An error answered
   * before the stream began is thrown as an ApiError; a stream cut short, as a ConnectionError.
   */
  async stream(path: string, body: unknown, onLine: (line: Record<string, unknown>) => void): Promise<void> {
    const res = await this.open("POST", path, asJson(body, NDJSON));
    if (!String(res.headers["content-type"] ?? "").startsWith(NDJSON)) {
      const raw = await readAll(res);
      parseJson(raw, res, this.describe());
      throw new ConnectionError(`expected ${NDJSON} progress from ${path}, got ${res.headers["content-type"] ?? "no content type"}`);
    }
    let buffered = "";
    const flush = (final: boolean) => {
      const lines = buffered.split("\n");
      buffered = final ? "" : lines.pop()!;
      for (const line of lines) {
        if (!line.trim()) continue;
        let parsed: unknown;
        try {
          parsed = JSON.parse(line);
        } catch {
          throw new ConnectionError(`unreadable progress line from ${path}: ${line.slice(0, 200)}`);
        }
        onLine(parsed as Record<string, unknown>);
      }
    };
    await receive(
      res,
      `the progress stream from ${path}`,
      (chunk) => {
        buffered += chunk;
        flush(false);
      },
      () => flush(true),
    );
  }

  /** An error answer (status 400 and up) thrown as an ApiError, its body read first. */
  private async refuseError(res: IncomingMessage): Promise<void> {
    if ((res.statusCode ?? 0) >= 400) parseJson(await readAll(res), res, this.describe());
  }

  private open(method: string, path: string, { body, headers = {}, agent, timeoutMs }: RawRequest): Promise<IncomingMessage> {
    const t = this.target;
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => reject(err instanceof ConnectionError ? err : new ConnectionError(unreachable(this.describe(), err)));
      const req =
        "socketPath" in t
          ? httpRequest({ socketPath: t.socketPath, method, path, headers, agent }, resolve)
          : (t.url.protocol === "https:" ? httpsRequest : httpRequest)(
              {
                host: t.url.hostname,
                port: t.url.port || (t.url.protocol === "https:" ? 443 : 80),
                method,
                path: `${t.url.pathname.replace(/\/$/, "")}${path}`,
                headers: t.token ? { authorization: `Bearer ${t.token}`, ...headers } : headers,
                agent,
              },
              resolve,
            );
      if (timeoutMs !== undefined) {
        req.setTimeout(timeoutMs, () => req.destroy(new ConnectionError(`${method} ${path}: no answer from ${this.describe()} within ${timeoutMs / 1000} s`)));
      }
      req.on("error", onError);
      req.end(body);
    });
  }
}

/** hypervisorctl's own requests: JSON in (if any), and the answer it wants. */
function asJson(body: unknown, accept: string): RawRequest {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const headers: Record<string, string | number> = { accept, "user-agent": "hypervisorctl" };
  if (payload !== undefined) {
    headers["content-type"] = "application/json";
    headers["content-length"] = Buffer.byteLength(payload);
  }
  return { body: payload, headers };
}

/**
 * Hands a body over as text, chunk by chunk as it arrives, then calls `onEnd`. Whatever either
 * throws ends the stream with that error, and a stream cut short ends it as a ConnectionError
 * naming `what`.
 */
function receive(res: IncomingMessage, what: string, onText: (text: string) => void, onEnd: () => void = () => undefined): Promise<void> {
  res.setEncoding("utf8");
  return new Promise((resolve, reject) => {
    const broke = () => reject(new ConnectionError(`${what} broke off`));
    res.on("data", (chunk: string) => {
      try {
        onText(chunk);
      } catch (err) {
        // Reject first: destroying the response reports "aborted", which must not win.
        reject(err);
        res.destroy();
      }
    });
    res.on("end", () => {
      try {
        onEnd();
        resolve();
      } catch (err) {
        reject(err);
      }
    });
    res.on("error", broke);
    res.on("aborted", broke);
  });
}

function readAll(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on("data", (c: Buffer) => chunks.push(c));
    res.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    res.on("error", reject);
  });
}

/** The body as JSON; an error status becomes an ApiError, anything unreadable a ConnectionError. */
function parseJson<T>(raw: string, res: IncomingMessage, where: string): T {
  let body: unknown;
  try {
    body = JSON.parse(raw);
  } catch {
    throw new ConnectionError(`${where} answered ${res.statusCode} with something that is not JSON: ${raw.slice(0, 200)}`);
  }
  const status = res.statusCode ?? 0;
  if (status >= 400) {
    const e = (body as { error?: { code?: unknown; message?: unknown; requestId?: unknown } } | null)?.error;
    if (!e || typeof e.code !== "string") throw new ConnectionError(`${where} answered ${status} without an error body: ${raw.slice(0, 200)}`);
    throw new ApiError(status, e.code, String(e.message ?? ""), String(e.requestId ?? "-"), raw);
  }
  return body as T;
}

function unreachable(where: string, err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case "ENOENT":
      return `no operator socket at ${where}: is the hypervisor running? (--socket PATH, or HYPERVISOR_OPERATOR_SOCKET / HYPERVISOR_STATE_DIR as the daemon has them)`;
    case "ECONNREFUSED":
      return `nothing listens at ${where}: is the hypervisor running?`;
    case "EACCES":
      return `permission denied on ${where}: the socket is mode 0600, run as the hypervisor's user`;
    default:
      return `cannot reach the operator API at ${where}: ${err.code ?? err.message}`;
  }
}

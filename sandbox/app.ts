import { createHash } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { WebSocketServer, type WebSocket } from "ws";
import { Counter } from "./counter.js";
import { handleEchoSocket } from "./echo-socket.js";
import { callRoute, egressStatus, NO_GATEWAY, routeCallError, type EgressEnv } from "./egress-client.js";
import { logLine } from "./log.js";
import { renderPage, type Identity } from "./page.js";
import { RequestLog } from "./request-log.js";
import { handleTaskSocket } from "./task-socket.js";
import { TaskStore } from "./task-store.js";

export interface SandboxConfig {
  version: string;
  failHealth: boolean;
  /** A "bad release": at start it overwrites the data it finds (the counter, and a marker file naming its version). */
  rewriteData?: boolean;
  dataDir: string;
  /** Identity from the environment; per-request headers override it (the role changes on swap). */
  user: string | null;
  slot: string | null;
  generation: string | null;
  /** The user's account page on the hypervisor's public origin (HYPERVISOR_ACCOUNT_URL). */
  accountUrl: string;
  /** The egress gateway and this sandbox's token, when the hypervisor gave them. */
  egress: EgressEnv | null;
}

export interface Sandbox {
  listen(port: number, host: string): Promise<number>;
  close(): Promise<void>;
}

/** How long open WebSockets get to answer our close frame before they are cut. */
const WS_CLOSE_GRACE_MS = 500;
/** A route call's request body is a route name and a path. */
const EGRESS_BODY_LIMIT = 8 * 1024;
const DOWNLOAD_CHUNK = Buffer.from(Array.from({ length: 64 * 1024 }, (_, i) => i % 256));

export function createSandbox(config: SandboxConfig): Sandbox {
  mkdirSync(config.dataDir, { recursive: true });
  const tasks = TaskStore.open(config.dataDir);
  const requests = new RequestLog(config.dataDir);
  const counter = new Counter(config.dataDir);
  if (config.rewriteData) {
    counter.set(-1);
    writeFileSync(join(config.dataDir, "rewritten-by"), `${config.version}\n`);
  }
  const sockets = new WebSocketServer({ noServer: true });
  let closing = false;

  sockets.on("headers", (headers) => headers.push(`X-Sandbox-Version: ${config.version}`));

  const identity = (req: IncomingMessage): Identity => ({
    user: header(req, "x-hypervisor-user") ?? config.user,
    role: header(req, "x-hypervisor-role") ?? "unknown",
    generation: header(req, "x-hypervisor-generation") ?? config.generation,
    version: config.version,
    slot: config.slot,
  });

  // Maps, not object literals: a path like `/constructor` must not find an inherited property.
  const getRoutes = new Map<string, (req: IncomingMessage, res: ServerResponse, query: URLSearchParams) => void>([
    [
      "/health",
      (_req, res) => {
        if (config.failHealth) sendJson(res, 503, { status: "failing" });
        else sendJson(res, 200, { status: "ok", version: config.version });
      },
    ],
    [
      "/",
      (req, res) => {
        const body = renderPage(identity(req), { counter: counter.value(), accountUrl: config.accountUrl, noEgress: config.egress ? null : NO_GATEWAY });
        res.writeHead(200, {
          "Content-Type": "text/html; charset=utf-8",
          "Content-Length": Buffer.byteLength(body),
          "Cache-Control": "no-store",
        });
        res.end(body);
      },
    ],
    ["/whoami", (req, res) => sendJson(res, 200, identity(req))],
    ["/api/tasks", (_req, res) => sendJson(res, 200, { tasks: tasks.recent() })],
    ["/counter", (_req, res) => sendJson(res, 200, { count: counter.value() })],
    ["/api/egress", (_req, res) => void egressStatus(config.egress).then((status) => sendJson(res, 200, status))],
    ["/__sandbox/requests", (_req, res) => sendJson(res, 200, { requests: requests.entries() })],
    [
      "/sse",
      (_req, res, query) => {
        const count = integerParam(query, "n", 5, 100_000);
        const interval = integerParam(query, "interval", 100, 3_600_000);
        if (count === null || interval === null) {
          sendJson(res, 400, { error: "bad_request", message: "n and interval must be non-negative integers" });
          return;
        }
        streamEvents(res, count, interval);
      },
    ],
    [
      "/download",
      (_req, res, query) => {
        const bytes = query.has("bytes") ? integerParam(query, "bytes", 0, Number.MAX_SAFE_INTEGER) : null;
        if (bytes === null) {
          sendJson(res, 400, { error: "bad_request", message: "bytes must be a non-negative integer" });
          return;
        }
        streamBytes(res, bytes);
      },
    ],
  ]);

  const routes = (req: IncomingMessage, res: ServerResponse): void => {
    const { pathname, query } = splitUrl(req.url);
    if (pathname === "/echo" || pathname.startsWith("/echo/")) {
      req.resume();
      req.on("end", () => sendJson(res, 200, { method: req.method, url: req.url, headers: req.headers, rawHeaders: req.rawHeaders }));
      return;
    }
    if (pathname === "/counter" && req.method === "POST") {
      req.resume();
      sendJson(res, 200, { count: counter.increment() });
      return;
    }
    if (pathname === "/api/egress" && req.method === "POST") {
      callEgressRoute(req, res, config.egress);
      return;
    }
    if (pathname === "/upload") {
      if (allowMethods(req, res, ["POST"])) receiveUpload(req, res);
      return;
    }
    const handler = getRoutes.get(pathname);
    if (!handler) {
      sendJson(res, 404, { error: "not_found", path: pathname });
      return;
    }
    if (allowMethods(req, res, ["GET", "HEAD"])) handler(req, res, query);
  };

  const socketRoutes = new Map<string, (ws: WebSocket) => void>([
    ["/ws", (ws) => handleTaskSocket(ws, { version: config.version, tasks })],
    ["/ws/echo", handleEchoSocket],
  ]);

  const server = createServer((req, res) => {
    requests.record(req, false);
    res.setHeader("X-Sandbox-Version", config.version);
    try {
      routes(req, res);
    } catch (error) {
      logLine({ msg: "request failed", url: req.url, error: (error as Error).message });
      if (!res.headersSent) sendJson(res, 500, { error: "internal" });
      else res.destroy();
    }
  });

  // Longer than a proxy's idle pool timeout, so the proxy (not the sandbox) closes idle
  // keep-alive connections and never reuses one the sandbox is just closing.
  server.keepAliveTimeout = 65_000;

  server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    requests.record(req, true);
    socket.on("error", () => socket.destroy());
    const { pathname } = splitUrl(req.url);
    const handler = socketRoutes.get(pathname);
    if (closing) return rejectUpgrade(socket, 503, "shutting down", config.version);
    if (!handler) return rejectUpgrade(socket, 404, "no WebSocket endpoint here", config.version);
    sockets.handleUpgrade(req, socket, head, (ws) => {
      ws.on("error", (error) => logLine({ msg: "websocket error", path: pathname, error: error.message }));
      handler(ws);
    });
  });

  return {
    listen: (port, host) =>
      new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, host, () => {
          server.off("error", reject);
          const address = server.address();
          resolve(typeof address === "object" && address ? address.port : port);
        });
      }),

    async close() {
      closing = true;
      server.close();
      const open = [...sockets.clients];
      // 1001 "going away" (RFC 6455 §7.4.1): the server is shutting down.
      for (const ws of open) ws.close(1001, "server shutting down");
      await Promise.race([
        Promise.all(open.map((ws) => new Promise((resolve) => ws.once("close", resolve)))),
        new Promise((resolve) => setTimeout(resolve, WS_CLOSE_GRACE_MS).unref()),
      ]);
      for (const ws of sockets.clients) ws.terminate();
      // Keep-alive and streaming connections would otherwise hold the process open.
      server.closeAllConnections();
      await requests.close();
    },
  };
}

function header(req: IncomingMessage, name: string): string | null {
  const value = req.headers[name];
  return typeof value === "string" ? value : null;
}

/** Splits by hand: `new URL('//x', base)` would read a leading `//` as a host. */
function splitUrl(url = "/"): { pathname: string; query: URLSearchParams } {
  const mark = url.indexOf("?");
  return mark === -1 ? { pathname: url, query: new URLSearchParams() } : { pathname: url.slice(0, mark), query: new URLSearchParams(url.slice(mark + 1)) };
}

function integerParam(query: URLSearchParams, name: string, fallback: number, max: number): number | null {
  const raw = query.get(name);
  if (raw === null) return fallback;
  if (!/^\d+$/.test(raw)) return null;
  const value = Number(raw);
  return value <= max ? value : null;
}

function allowMethods(req: IncomingMessage, res: ServerResponse, methods: string[]): boolean {
  if (methods.includes(req.method ?? "")) return true;
  req.resume();
  sendJson(res, 405, { error: "method_not_allowed", allow: methods }, { Allow: methods.join(", ") });
  return false;
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    ...headers,
    "Content-Type": "application/json; charset=utf-8",
    "Content-Length": Buffer.byteLength(text),
    "Cache-Control": "no-store",
  });
  res.end(text);
}

function rejectUpgrade(socket: Duplex, status: number, message: string, version: string): void {
  const body = JSON.stringify({ error: status === 404 ? "not_found" : "unavailable", message });
  socket.end(
    `HTTP/1.1 ${status} ${status === 404 ? "Not Found" : "Service Unavailable"}\r\n` +
      `X-Sandbox-Version: ${version}\r\nContent-Type: application/json; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

function receiveUpload(req: IncomingMessage, res: ServerResponse): void {
  const hash = createHash("sha256");
  let bytes = 0;
  req.on("data", (chunk: Buffer) => {
    bytes += chunk.length;
    hash.update(chunk);
  });
  req.on("end", () => sendJson(res, 200, { bytes, sha256: hash.digest("hex") }));
  req.on("error", () => res.destroy());
}

/** Server-sent events (HTML Living Standard §9.2), each written as soon as it is due. */
function streamEvents(res: ServerResponse, count: number, interval: number): void {
  res.writeHead(200, {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-store",
    // Tells buffering proxies (nginx) to pass events through as they come.
    "X-Accel-Buffering": "no",
  });
  res.flushHeaders();
  let sent = 0;
  let timer: NodeJS.Timeout | undefined;
  const next = (): void => {
    sent += 1;
    res.write(`data: ${sent}\n\n`);
    if (sent === count) res.end();
    else timer = setTimeout(next, interval);
  };
  res.on("close", () => clearTimeout(timer));
  if (count === 0) res.end();
  else next();
}

/** Chunked on purpose (no Content-Length), with backpressure so large bodies stay in constant memory. */
function streamBytes(res: ServerResponse, total: number): void {
  res.writeHead(200, { "Content-Type": "application/octet-stream", "Cache-Control": "no-store" });
  let remaining = total;
  const pump = (): void => {
    while (remaining > 0 && !res.destroyed) {
      const chunk = remaining >= DOWNLOAD_CHUNK.length ? DOWNLOAD_CHUNK : DOWNLOAD_CHUNK.subarray(0, remaining);
      remaining -= chunk.length;
      if (!res.write(chunk)) {
        res.once("drain", pump);
        return;
      }
    }
    res.end();
  };
  pump();
}

/** `POST /api/egress {route, path}`: one GET through an egress route, answered with what came back. */
function callEgressRoute(req: IncomingMessage, res: ServerResponse, egress: EgressEnv | null): void {
  let text = "";
  let tooLong = false;
  req.setEncoding("utf8");
  req.on("data", (chunk: string) => {
    text += chunk;
    if (text.length > EGRESS_BODY_LIMIT) tooLong = true;
  });
  req.on("end", () => {
    if (!egress) return sendJson(res, 503, { error: "no_gateway", message: NO_GATEWAY });
    let body: { route?: unknown; path?: unknown };
    try {
      if (tooLong) throw new Error("too long");
      body = JSON.parse(text) as typeof body;
    } catch {
      return sendJson(res, 400, { error: "bad_request", message: 'send JSON: { "route": NAME, "path": "/..." }' });
    }
    const problem = routeCallError(body?.route, body?.path);
    if (problem) return sendJson(res, 400, { error: "bad_request", message: problem });
    callRoute(egress, body.route as string, body.path as string).then(
      (answer) => sendJson(res, 200, { ...answer, ...gatewayRefusal(answer.contentType, answer.body) }),
      (error: Error) => sendJson(res, 502, { error: "gateway_unreachable", message: `the egress gateway did not answer: ${error.message}` }),
    );
  });
}

/** The gateway's own refusals are JSON `{ error: { code, message } }`: passed on so the page can say them in words. */
function gatewayRefusal(contentType: string | null, body: string): { error?: { code: string; message: string } } {
  if (!contentType?.startsWith("application/json")) return {};
  try {
    const parsed = JSON.parse(body) as { error?: { code?: unknown; message?: unknown } };
    const { code, message } = parsed.error ?? {};
    return typeof code === "string" && typeof message === "string" ? { error: { code, message } } : {};
  } catch {
    return {};
  }
}

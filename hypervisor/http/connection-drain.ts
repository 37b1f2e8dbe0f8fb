import type { IncomingMessage, Server, ServerResponse } from "node:http";
import { Server as NetServer, type Socket } from "node:net";

/**
 * A keep-alive client may be sending its next request the moment its last response ends;
 * closing the connection then fails that request (RFC 9112 §9.6 allows the close, and only
 * idempotent requests may be retried). So while draining, an idle connection is closed only
 * once it has been idle this long, and a request arriving before that is answered, with
 * `Connection: close`.
 */
const IDLE_LINGER_MS = 250;

interface Connection {
  inFlight: Set<ServerResponse>;
  idleSince: number;
  /** A WebSocket now: its owner closes it with a close frame, not this drain. */
  upgraded: boolean;
  timer?: NodeJS.Timeout;
}

/**
 * A graceful stop for one HTTP server: stop accepting, let the requests in flight finish within a
 * grace period (new ones on open connections too, each then the connection's last), close
 * keep-alive connections without racing their clients, and cut whatever is left at the deadline.
 */
export class ConnectionDrain {
  private readonly connections = new Map<Socket, Connection>();
  private draining = false;

  constructor(private readonly server: Server) {
    server.on("connection", (socket: Socket) => {
      const connection: Connection = { inFlight: new Set(), idleSince: performance.now(), upgraded: false };
      this.connections.set(socket, connection);
      socket.once("close", () => {
        clearTimeout(connection.timer);
        this.connections.delete(socket);
      });
    });
    // Ahead of the request handler, so a response it writes at once already says Connection: close.
    server.prependListener("request", (req: IncomingMessage, res: ServerResponse) => {
      const connection = this.connections.get(req.socket);
      if (!connection) return;
      if (this.draining) res.shouldKeepAlive = false;
      connection.inFlight.add(res);
      res.once("close", () => {
        connection.inFlight.delete(res);
        connection.idleSince = performance.now();
        if (this.draining) this.closeWhenIdle(req.socket, connection);
      });
    });
    server.prependListener("upgrade", (req: IncomingMessage) => {
      const connection = this.connections.get(req.socket);
      if (connection) connection.upgraded = true;
    });
  }

  /** Stops accepting and resolves once every connection has closed, cutting those still open after `graceMs`. */
  close(graceMs: number): Promise<void> {
    this.draining = true;
    const closed = new Promise<void>((resolve) => {
      // net.Server's close only stops accepting; http.Server's would also close idle keep-alive
      // connections at once (Node ≥ 19), racing their clients' next requests (IDLE_LINGER_MS).
      NetServer.prototype.close.call(this.server, () => resolve());
    });
    for (const [socket, connection] of this.connections) {
      for (const res of connection.inFlight) if (!res.headersSent) res.shouldKeepAlive = false;
      this.closeWhenIdle(socket, connection);
    }
    const deadline = setTimeout(() => {
      for (const socket of this.connections.keys()) socket.destroy();
    }, graceMs);
    return closed.finally(() => clearTimeout(deadline));
  }

  private closeWhenIdle(socket: Socket, connection: Connection): void {
    if (connection.upgraded || connection.inFlight.size > 0) return;
    clearTimeout(connection.timer);
    const wait = connection.idleSince + IDLE_LINGER_MS - performance.now();
    if (wait <= 0) socket.destroy();
    else connection.timer = setTimeout(() => this.closeWhenIdle(socket, connection), wait);
  }
}

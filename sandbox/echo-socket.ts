import type { WebSocket } from "ws";
import { logLine } from "./log.js";

const CLOSE_COMMAND = /^close:(\d{1,4})$/;

/**
 * `/ws/echo`: every message comes back unchanged and in order, binary as binary, so proxy tests
 * can check framing end to end. `close:<code>` asks the server to close with that code
 * (RFC 6455 §7.4) and reason "requested".
 */
export function handleEchoSocket(socket: WebSocket): void {
  // Logged so a proxy test can prove which close code reached the sandbox.
  socket.on("close", (code) => logLine({ msg: "echo closed", code }));
  socket.on("message", (data, isBinary) => {
    const command = isBinary ? null : CLOSE_COMMAND.exec(data.toString());
    if (command) {
      try {
        socket.close(Number(command[1]), "requested");
        return;
      } catch {
        // Not a code a server may send (e.g. 1005); then it is just another message to echo.
      }
    }
    socket.send(data, { binary: isBinary });
  });
}

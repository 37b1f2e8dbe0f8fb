import type { WebSocket } from "ws";
import { logLine } from "./log.js";

const CLOSE_COMMAND = /^close:(\d{1,4})$/;
const FLOOD_COMMAND = /^flood:(\d{1,4})x(\d{1,9})$/;

/**
 * `/ws/echo`: every message comes back unchanged and in order, binary as binary, so proxy tests
 * can check framing end to end. `close:<code>` asks the server to close with that code
 * (RFC 6455 §7.4) and reason "requested". `flood:<count>x<bytes>` sends that many binary
 * messages of that size at once, however slowly the other end reads, as a runaway app would.
 */
export function handleEchoSocket(socket: WebSocket): void {
  // Logged so a proxy test can prove which close code reached the sandbox.
  socket.on("close", (code) => logLine({ msg: "echo closed", code }));
  socket.on("message", (data, isBinary) => {
    const text = isBinary ? "" : data.toString();
    const flood = FLOOD_COMMAND.exec(text);
    if (flood) {
      // One buffer for every message: the flood costs the proxy, not this process.
      const message = Buffer.alloc(Number(flood[2]), 0x5a);
      for (let i = 0; i < Number(flood[1]); i++) socket.send(message, { binary: true });
      return;
    }
    const command = CLOSE_COMMAND.exec(text);
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

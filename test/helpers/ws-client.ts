import { WebSocket } from "ws";

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

// The box's only way out: an HTTP proxy on the host end of its veth that forwards to Debian's
// mirror (apt, plain http GETs) and to the npm registry (npm, CONNECT to port 443) and refuses
// everything else. The box has no route beyond this host, so nothing it runs can download
// anything but Debian packages and the lockfile's tarballs; every request is recorded for the
// report.
import { createServer, request as httpRequest, type Server } from "node:http";
import { connect } from "node:net";

export interface ProxyRecord {
  method: string;
  target: string;
  allowed: boolean;
}

export interface EgressProxy {
  url: string;
  records: ProxyRecord[];
  close(): Promise<void>;
}

/**
 * `httpHosts`: hosts apt may GET from over plain http (the mirror; apt checks every file against
 * the signed Release). `tlsHosts`: hosts that may be tunnelled to on port 443.
 */
export function startEgressProxy(address: string, httpHosts: readonly string[], tlsHosts: readonly string[]): Promise<EgressProxy> {
  const records: ProxyRecord[] = [];
  const tunnels = new Set<{ destroy(): void }>();
  const server: Server = createServer((req, res) => {
    let url: URL | undefined;
    try {
      url = new URL(req.url ?? "");
    } catch {
      // not an absolute URL: not a proxy request
    }
    const allowed =
      !!url &&
      url.protocol === "http:" &&
      httpHosts.includes(url.hostname) &&
      (url.port === "" || url.port === "80") &&
      ["GET", "HEAD"].includes(req.method ?? "");
    records.push({ method: req.method ?? "", target: req.url ?? "", allowed });
    if (!allowed || !url) {
      res.writeHead(403, { "content-type": "text/plain" }).end("refused by the rehearsal's egress proxy\n");
      return;
    }
    const headers: Record<string, string | string[] | undefined> = { ...req.headers, host: url.host };
    delete headers["proxy-connection"];
    const upstream = httpRequest({ host: url.hostname, port: 80, path: `${url.pathname}${url.search}`, method: req.method, headers }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    upstream.on("error", (err) => {
      if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" });
      res.end(`upstream: ${err.message}\n`);
    });
    req.pipe(upstream);
  });
  server.on("connect", (req, socket, head) => {
    const [host, port] = (req.url ?? "").split(":");
    const allowed = !!host && tlsHosts.includes(host) && port === "443";
    records.push({ method: "CONNECT", target: req.url ?? "", allowed });
    if (!allowed) {
      socket.end("HTTP/1.1 403 Forbidden\r\n\r\n");
      return;
    }
    const upstream = connect(443, host, () => {
      socket.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      if (head.length) upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    tunnels.add(socket).add(upstream);
    upstream.on("error", () => socket.destroy());
    socket.on("error", () => upstream.destroy());
    socket.on("close", () => {
      tunnels.delete(socket);
      tunnels.delete(upstream);
    });
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(3142, address, () =>
      resolve({
        url: `http://${address}:3142`,
        records,
        close: () =>
          new Promise((done) => {
            server.close(() => done());
            server.closeAllConnections();
            for (const t of tunnels) t.destroy();
          }),
      }),
    );
  });
}

/** Each host the box reached, with its number of requests, and every refused request: for the report. */
export function summarize(records: readonly ProxyRecord[]): { reached: Map<string, number>; refused: string[] } {
  const reached = new Map<string, number>();
  const refused: string[] = [];
  for (const r of records) {
    if (!r.allowed) refused.push(`${r.method} ${r.target}`);
    else {
      const host = r.method === "CONNECT" ? r.target : new URL(r.target).host;
      reached.set(host, (reached.get(host) ?? 0) + 1);
    }
  }
  return { reached, refused };
}

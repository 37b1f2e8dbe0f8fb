import { execFile, spawn, spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { WebSocket } from "ws";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
import { daemonEnv, spawnDaemon, tempDir } from "../helpers/daemon.js";
import { testUser } from "../helpers/run-id.js";

const run = promisify(execFile);
const ORIGIN = "http://hv.bench";
const SOCKETS = 5000;

export interface WrkResult {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
}

function ms(value: string): number {
  const m = /^([\d.]+)(us|ms|s)$/.exec(value.trim());
  if (!m) return NaN;
  return Number(m[1]) * (m[2] === "us" ? 0.001 : m[2] === "s" ? 1000 : 1);
}

/** One wrk run with latency percentiles; the same settings for every target. */
export async function wrk(url: string, cookie: string): Promise<WrkResult> {
  const { stdout } = await run("wrk", ["-t1", "-c32", "-d8s", "--latency", "-H", `Cookie: ${cookie}`, url]);
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(stdout)?.[1]);
  const p50 = ms(/\s50%\s+(\S+)/.exec(stdout)?.[1] ?? "");
  const p99 = ms(/\s99%\s+(\S+)/.exec(stdout)?.[1] ?? "");
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(stdout)?.[1] ?? 0);
  const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(stdout);
  const errors = non2xx + (socketErrors ? socketErrors.slice(1).reduce((a, b) => a + Number(b), 0) : 0);
  return { rps, p50, p99, errors };
}

/** nginx as a plain reverse proxy with a keep-alive upstream, one worker like our one event loop. */
function startNginx(dir: string, upstreamPort: number, port: number): () => void {
  const conf = join(dir, "nginx.conf");
  writeFileSync(
    conf,
    `worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fcgi; uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  upstream sandbox { server 127.0.0.1:${upstreamPort}; keepalive 64; }
  server {
    listen 127.0.0.1:${port};
    location / { proxy_pass http://sandbox; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
`,
  );
  const child = spawn("nginx", ["-c", conf, "-p", dir, "-g", "daemon off;"], { stdio: "ignore" });
  return () => child.kill("SIGTERM");
}

function rssMiB(pid: number): number {
  const kb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]);
  return kb / 1024;
}

async function openSockets(url: string, cookie: string, n: number): Promise<WebSocket[]> {
  const sockets: WebSocket[] = [];
  for (let i = 0; i < n; i += 250) {
    const batch = Array.from({ length: Math.min(250, n - i) }, () => {
      const ws = new WebSocket(url, { headers: { cookie, origin: ORIGIN } });
      sockets.push(ws);
      return new Promise<void>((resolve, reject) => {
        ws.once("open", () => resolve());
        ws.once("error", reject);
      });
    });
    await Promise.all(batch);
  }
  return sockets;
}

export async function proxyBench(): Promise<void> {
  if (spawnSync("wrk", ["--version"]).error || spawnSync("nginx", ["-v"]).error) {
    console.log("\n(wrk or nginx-light not installed: proxy figures skipped; ./scripts/install-deps.sh installs them)");
    return;
  }
  const state = tempDir();
  const daemon = await spawnDaemon(daemonEnv(state.path, { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN, HYPERVISOR_LISTEN: "127.0.0.1:18680" }));
  const publicUrl = "http://127.0.0.1:18680";
  let stopNginx = () => {};
  try {
    const client = new PublicClient(publicUrl, ORIGIN);
    const user = testUser("bench");
    const reg = await client.register(user, new SoftwareAuthenticator(ORIGIN));
    if (!client.cookie) throw new Error(`registration failed: ${JSON.stringify(reg)}`);
    const cookie = `hv_session=${client.cookie}`;
    await client.get("/whoami");
    const sandbox = (await daemon.operator.get(`/sandboxes?user=${user}`)).body.sandboxes.find((s: { role: string }) => s.role === "live");
    const upstreamPort = sandbox.endpoint.port as number;
    stopNginx = startNginx(state.path, upstreamPort, 18681);
    await sleep(300);

    const targets = {
      direct: `http://127.0.0.1:${upstreamPort}/whoami`,
      hypervisor: `${publicUrl}/whoami`,
      nginx: "http://127.0.0.1:18681/whoami",
    } as const;
    const results: Record<keyof typeof targets, WrkResult[]> = { direct: [], hypervisor: [], nginx: [] };
    for (let round = 0; round < 2; round++) {
      for (const [name, url] of Object.entries(targets) as [keyof typeof targets, string][]) results[name].push(await wrk(url, cookie));
    }
    const best = (name: keyof typeof targets) => results[name].reduce((a, b) => (b.rps > a.rps ? b : a));
    const [a, b, c] = [best("direct"), best("hypervisor"), best("nginx")];
    console.log("\nHTTP proxy, GET /whoami on the reference sandbox (wrk -t1 -c32 -d8s, best of 2 rounds, same run)");
    console.log(`${"".padEnd(34)}${"req/s".padStart(10)}${"p50 ms".padStart(9)}${"p99 ms".padStart(9)}${"errors".padStart(8)}`);
    for (const [name, r] of [
      ["(a) direct to the sandbox", a],
      ["(b) hypervisor, valid session", b],
      ["(c) nginx, keep-alive upstream", c],
    ] as const) {
      console.log(
        `${name.padEnd(34)}${r.rps.toFixed(0).padStart(10)}${r.p50.toFixed(2).padStart(9)}${r.p99.toFixed(2).padStart(9)}${String(r.errors).padStart(8)}`,
      );
    }
    console.log(`(b)/(a) throughput ${(b.rps / a.rps).toFixed(2)}, p50 ${(b.p50 / a.p50).toFixed(2)}×, p99 ${(b.p99 / a.p99).toFixed(2)}×`);
    console.log(`(b)/(c) throughput ${(b.rps / c.rps).toFixed(2)}, p50 ${(b.p50 / c.p50).toFixed(2)}×, p99 ${(b.p99 / c.p99).toFixed(2)}×`);

    const pid = daemon.child.pid!;
    const before = rssMiB(pid);
    const sockets = await openSockets(`${publicUrl.replace("http", "ws")}/ws/echo`, cookie, SOCKETS);
    await sleep(2000);
    const withSockets = rssMiB(pid);
    const open = sockets.filter((s) => s.readyState === WebSocket.OPEN).length;
    console.log(`\nIdle WebSockets through the hypervisor: ${open} open`);
    console.log(
      `hypervisor RSS ${before.toFixed(1)} MiB → ${withSockets.toFixed(1)} MiB: ${(((withSockets - before) * 1024) / open).toFixed(1)} KiB per proxied WebSocket (client and upstream legs)`,
    );
    for (const s of sockets) s.terminate();
  } finally {
    stopNginx();
    await daemon.operator.post(`/sandboxes/${testUser("bench")}/live/stop`).catch(() => undefined);
    await daemon.kill("SIGTERM");
    state.remove();
  }
}

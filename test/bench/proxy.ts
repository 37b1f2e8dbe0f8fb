import { execFile, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { WebSocket } from "ws";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
import { daemonEnv, spawnDaemon, tempDir } from "../helpers/daemon.js";
import { repoRoot } from "../helpers/paths.js";
import { sandboxPids } from "../helpers/proc.js";
import { testUser } from "../helpers/run-id.js";
import { summarize, type Summary } from "./stats.js";

const run = promisify(execFile);
const ORIGIN = "http://hv.bench";
const HV_PORT = 18680;
/** Every proxy runs on this core and wrk on the other, so a proxy's figure is one core's. */
const PROXY_CPU = "1";
const LOAD_CPU = "0";
const IDLE_SOCKETS = 5000;
/** Rounds over every target, interleaved, so a burst of load elsewhere on the machine hits one round of each. */
const ROUNDS = 3;
/** Descriptors the daemon holds besides its WebSockets: listeners, SQLite, pipes, the pools. */
const DAEMON_FD_RESERVE = 200;
const CLK_TCK = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim()) || 100;

export interface WrkResult {
  rps: number;
  requests: number;
  p50: number;
  p99: number;
  errors: number;
}

/** wrk prints latencies as `352.00us`, `4.41ms` or `1.02s`; figures here are in µs. */
function us(value: string): number {
  const m = /^([\d.]+)(us|ms|s)$/.exec(value.trim());
  if (!m) return NaN;
  return Number(m[1]) * (m[2] === "us" ? 1 : m[2] === "ms" ? 1000 : 1e6);
}

/** One wrk run, pinned to the load core; every target gets the same settings and the same cookie. */
export async function wrk(url: string, cookie: string, connections: number, seconds: number): Promise<WrkResult> {
  const args = ["-c", LOAD_CPU, "wrk", "-t1", `-c${connections}`, `-d${seconds}s`, "--latency", "-H", `Cookie: ${cookie}`, url];
  const { stdout } = await run("taskset", args);
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(stdout)?.[1] ?? 0);
  const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(stdout);
  return {
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(stdout)?.[1]),
    requests: Number(/(\d+) requests in/.exec(stdout)?.[1]),
    p50: us(/\s50%\s+(\S+)/.exec(stdout)?.[1] ?? ""),
    p99: us(/\s99%\s+(\S+)/.exec(stdout)?.[1] ?? ""),
    errors: non2xx + (socketErrors ? socketErrors.slice(1).reduce((a, b) => a + Number(b), 0) : 0),
  };
}

/** CPU time (user + system, every thread) the process has used, in µs. */
function cpuMicros(pid: number): number {
  // Fields after the parenthesised command name, which may itself hold spaces: utime is 14th, stime 15th.
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1e6) / CLK_TCK;
}

/** A process's hard open-files limit (20,000 on the benchmark machines, DESIGN §9); Node raises its soft limit to it. */
function nofileHard(pid: number): number {
  return Number(/^Max open files\s+\S+\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/limits`, "utf8"))?.[1]);
}

function rssKiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]);
}

/** The process listening on a loopback port: a peer proxy. */
function listenerPid(port: number): number | undefined {
  const out = spawnSync("ss", ["-Hltnp", `sport = :${port}`], { encoding: "utf8" }).stdout;
  const pid = /pid=(\d+)/.exec(out)?.[1];
  return pid ? Number(pid) : undefined;
}

async function listening(port: number, timeoutMs = 5000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (listenerPid(port) !== undefined) return true;
    await sleep(50);
  }
  return false;
}

function has(command: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${command}`]).status === 0;
}

interface Peer {
  name: string;
  url: string;
  /** Why this row has no figures: the peer is not installed or did not start. */
  missing?: string;
  pid?: number;
  child?: ChildProcess;
  /** The last line the peer wrote to stderr, to say why it stopped. */
  stderr?: () => string;
}

/** Starts a peer proxy pinned to the proxy core, in front of the same sandbox. */
async function startPeer(name: string, port: number, command: string, args: string[], env: Record<string, string> = {}): Promise<Peer> {
  const url = `http://127.0.0.1:${port}/whoami`;
  if (!has(command)) return { name, url, missing: `${command} not installed (./scripts/install-deps.sh)` };
  // taskset execs the command, so the child's pid is the proxy's own.
  const child = spawn("taskset", ["-c", PROXY_CPU, command, ...args], { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, ...env } });
  let stderr = "";
  child.stderr!.on("data", (c: Buffer) => (stderr = (stderr + c.toString()).slice(-500)));
  if (!(await listening(port)) || child.exitCode !== null) {
    child.kill("SIGKILL");
    return { name, url, missing: `did not start: ${stderr.trim().split("\n").pop() ?? ""}` };
  }
  return { name, url, pid: child.pid!, child, stderr: () => stderr.trim().split("\n").pop() ?? "" };
}

function nginxConf(dir: string, upstream: string, port: number): string {
  // master_process off: the one process that serves is the one measured; it runs the same event loop a worker does.
  return `master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fcgi; uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  upstream sandbox { server ${upstream}; keepalive 64; }
  server {
    listen 127.0.0.1:${port};
    location / { proxy_pass http://sandbox; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
`;
}

function haproxyConf(upstream: string, port: number): string {
  return `global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend public
  bind 127.0.0.1:${port}
  default_backend sandbox
backend sandbox
  server s1 ${upstream}
`;
}

function caddyfile(upstream: string, port: number): string {
  return `{
  admin off
  auto_https off
}
http://127.0.0.1:${port} {
  reverse_proxy ${upstream}
}
`;
}

/** `upstream`: the sandbox as `host:port` (its own address in its own network namespace, as root). */
async function startPeers(dir: string, upstream: string): Promise<Peer[]> {
  for (const sub of ["body", "proxy", "fcgi", "uwsgi", "scgi"]) mkdirSync(join(dir, sub), { recursive: true });
  writeFileSync(join(dir, "nginx.conf"), nginxConf(dir, upstream, 18681));
  writeFileSync(join(dir, "haproxy.cfg"), haproxyConf(upstream, 18682));
  writeFileSync(join(dir, "Caddyfile"), caddyfile(upstream, 18683));
  const chp = join(repoRoot, "node_modules/configurable-http-proxy/bin/configurable-http-proxy");
  const minimal = join(repoRoot, "dist/test/bench/fixtures/minimal-proxy.js");
  return Promise.all([
    startPeer("nginx (1 worker)", 18681, "nginx", ["-c", join(dir, "nginx.conf"), "-p", dir, "-g", "daemon off;"]),
    startPeer("HAProxy (nbthread 1)", 18682, "haproxy", ["-db", "-f", join(dir, "haproxy.cfg")]),
    startPeer("Caddy (GOMAXPROCS=1)", 18683, "caddy", ["run", "--adapter", "caddyfile", "--config", join(dir, "Caddyfile")], {
      GOMAXPROCS: "1",
      XDG_DATA_HOME: dir,
      XDG_CONFIG_HOME: dir,
    }),
    startPeer("configurable-http-proxy", 18684, process.execPath, [
      chp,
      "--ip",
      "127.0.0.1",
      "--port",
      "18684",
      "--api-ip",
      "127.0.0.1",
      "--api-port",
      "18685",
      "--default-target",
      `http://${upstream}`,
      "--log-level",
      "error",
    ]),
    startPeer("node:http + undici (minimal)", 18686, process.execPath, [minimal, "18686", upstream]),
  ]);
}

interface Row {
  peer: Peer;
  c32?: WrkResult;
  c1?: WrkResult;
  cpuPerRequest?: number;
}

/** -c32 for throughput, p99 and CPU (read from /proc over exactly that run), then -c1 for the unloaded p50. */
async function measure(peer: Peer, cookie: string): Promise<Row> {
  if (peer.missing || peer.pid === undefined) return { peer };
  const { child } = peer;
  if (child && (child.exitCode !== null || child.signalCode !== null)) {
    return { peer: { ...peer, missing: `exited during the bench (${child.exitCode ?? child.signalCode}): ${peer.stderr?.() ?? ""}` } };
  }
  const before = cpuMicros(peer.pid);
  const c32 = await wrk(peer.url, cookie, 32, 6);
  const cpuPerRequest = (cpuMicros(peer.pid) - before) / c32.requests;
  const c1 = await wrk(peer.url, cookie, 1, 3);
  return { peer, c32, c1, cpuPerRequest };
}

function printHttpTable(rows: Row[]): void {
  const floor = rows.find((r) => r.peer.name.startsWith("node:http"));
  const caddy = rows.find((r) => r.peer.name.startsWith("Caddy"));
  const cols = ["req/s", "p50 ms", "p99 ms", "p50@1 µs", "CPU µs/req", "err", "CPU ×min", "p50@1 −min", "req/s ×min", "req/s ×Caddy"];
  const widths = [9, 8, 8, 10, 11, 5, 9, 11, 11, 13];
  console.log(`${"".padEnd(32)}${cols.map((c, i) => c.padStart(widths[i]!)).join("")}`);
  for (const { peer, c32, c1, cpuPerRequest } of rows) {
    if (!c32 || !c1 || cpuPerRequest === undefined) {
      console.log(`${peer.name.padEnd(32)}  not measured: ${peer.missing ?? "unknown"}`);
      continue;
    }
    const ratio = (a: number | undefined, b: number | undefined) => (a !== undefined && b !== undefined ? (a / b).toFixed(2) : "-");
    const cells = [
      c32.rps.toFixed(0),
      (c32.p50 / 1000).toFixed(2),
      (c32.p99 / 1000).toFixed(2),
      c1.p50.toFixed(0),
      cpuPerRequest.toFixed(1),
      String(c32.errors + c1.errors),
      ratio(cpuPerRequest, floor?.cpuPerRequest),
      floor?.c1 ? `${c1.p50 - floor.c1.p50 >= 0 ? "+" : ""}${(c1.p50 - floor.c1.p50).toFixed(0)}` : "-",
      ratio(c32.rps, floor?.c32?.rps),
      ratio(c32.rps, caddy?.c32?.rps),
    ];
    console.log(`${peer.name.padEnd(32)}${cells.map((c, i) => c.padStart(widths[i]!)).join("")}`);
  }
}

function loadAverage(): string {
  return readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
}

async function openSocket(url: string, cookie: string): Promise<WebSocket> {
  const ws = new WebSocket(url, { headers: { cookie, origin: ORIGIN }, perMessageDeflate: false });
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
  });
  return ws;
}

async function openSockets(url: string, cookie: string, n: number, into: WebSocket[]): Promise<void> {
  for (let i = 0; i < n; i += 250) {
    const batch = await Promise.all(Array.from({ length: Math.min(250, n - i) }, () => openSocket(url, cookie)));
    into.push(...batch);
  }
}

/** Round trips of `count` 1 KiB text messages, one at a time, on one socket; in µs. */
async function roundTrips(ws: WebSocket, count: number): Promise<number[]> {
  const message = "x".repeat(1024);
  const samples: number[] = [];
  for (let i = 0; i < count; i++) {
    const sent = process.hrtime.bigint();
    await new Promise<void>((resolve) => {
      ws.once("message", () => resolve());
      ws.send(message);
    });
    samples.push(Number(process.hrtime.bigint() - sent) / 1000);
  }
  return samples;
}

/**
 * Round trips direct and through the proxy, interleaved in blocks so that load elsewhere on the
 * machine falls on both alike: 1,000 sequential messages on one socket each (after 100 to warm
 * up), then 10 on each of 100 sockets at once, in two halves per side.
 */
async function wsRoundTrips(urls: { direct: string; proxied: string }, cookie: string): Promise<Record<"direct" | "proxied", { one: Summary; many: Summary }>> {
  const sides = ["direct", "proxied"] as const;
  const one = { direct: [] as number[], proxied: [] as number[] };
  const many = { direct: [] as number[], proxied: [] as number[] };
  const singles = { direct: await openSocket(urls.direct, cookie), proxied: await openSocket(urls.proxied, cookie) };
  for (const side of sides) await roundTrips(singles[side], 100);
  for (let block = 0; block < 10; block++) for (const side of sides) one[side].push(...(await roundTrips(singles[side], 100)));
  for (const side of sides) singles[side].close();
  const fleets = { direct: [] as WebSocket[], proxied: [] as WebSocket[] };
  for (const side of sides) await openSockets(urls[side], cookie, 100, fleets[side]);
  for (let half = 0; half < 2; half++) {
    for (const side of sides) many[side].push(...(await Promise.all(fleets[side].map((ws) => roundTrips(ws, 5)))).flat());
  }
  for (const side of sides) for (const ws of fleets[side]) ws.close();
  return {
    direct: { one: summarize(one.direct), many: summarize(many.direct) },
    proxied: { one: summarize(one.proxied), many: summarize(many.proxied) },
  };
}

export async function proxyBench(): Promise<void> {
  if (!has("wrk") || !has("taskset")) {
    console.log("\n(wrk or taskset not installed: proxy figures skipped; ./scripts/install-deps.sh installs them)");
    return;
  }
  const state = tempDir();
  const peersDir = tempDir("hv-bench-peers-");
  // BENCH_CPU_PROF=DIR: the daemon writes a V8 CPU profile of the whole run there when it stops.
  const profileDir = process.env.BENCH_CPU_PROF;
  // One user opens every WebSocket of the idle count: past the per-user bound, which it does not measure.
  const env = { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN, HYPERVISOR_LISTEN: `127.0.0.1:${HV_PORT}`, HYPERVISOR_USER_MAX_WEBSOCKETS: "100000" };
  const daemon = await spawnDaemon(daemonEnv(state.path, env), {
    nodeArgs: profileDir ? ["--cpu-prof", `--cpu-prof-dir=${profileDir}`] : [],
  });
  const publicUrl = `http://127.0.0.1:${HV_PORT}`;
  let peers: Peer[] = [];
  const sockets: WebSocket[] = [];
  try {
    const client = new PublicClient(publicUrl, ORIGIN);
    const user = testUser("bench");
    const reg = await client.register(user, new SoftwareAuthenticator(ORIGIN));
    if (!client.cookie) throw new Error(`registration failed: ${JSON.stringify(reg)}`);
    const cookie = `hv_session=${client.cookie}`;
    await client.get("/whoami");
    const sandbox = (await daemon.operator.get(`/sandboxes?user=${user}`)).body.sandboxes.find((s: { role: string }) => s.role === "live");
    const upstream = `${sandbox.endpoint.host as string}:${sandbox.endpoint.port as number}`;
    const daemonPid = daemon.child.pid!;
    spawnSync("taskset", ["-a", "-p", "-c", PROXY_CPU, String(daemonPid)], { stdio: "ignore" });
    peers = await startPeers(peersDir.path, upstream);
    // Read from /proc, not asked of the code under test: it may listen in a network namespace of its own.
    const sandboxPid = sandboxPids([user])[0];
    const direct: Peer = sandboxPid
      ? { name: "sandbox directly", url: `http://${upstream}/whoami`, pid: sandboxPid }
      : { name: "sandbox directly", url: "", missing: "its process was not found" };
    const hypervisor: Peer = { name: "hypervisor (real session)", url: `${publicUrl}/whoami`, pid: daemonPid };
    const all = [direct, ...peers, hypervisor];

    console.log(`\nHTTP proxy, GET /whoami on the reference sandbox; load average ${loadAverage()}`);
    console.log(
      `wrk -t1 on CPU ${LOAD_CPU}; every proxy pinned to CPU ${PROXY_CPU} (taskset, all threads); the sandbox unpinned. ` +
        `-c32 -d6s for req/s, p50/p99 and CPU (utime+stime from /proc of the proxy process; for the direct row, the sandbox's), ` +
        `then -c1 -d3s for p50@1. ${ROUNDS} interleaved rounds: per row the -c32 round with the most req/s, the lowest p50@1. ` +
        `"min" is the minimal node:http + undici proxy.`,
    );
    const rounds: Row[][] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const measured: Row[] = [];
      for (const peer of all) measured.push(await measure(peer, cookie));
      rounds.push(measured);
    }
    // The least disturbed round of each row: the -c32 round with the most req/s (its CPU with it), the lowest p50@1.
    const best = all.map((_, i) => {
      const runs = rounds.map((r) => r[i]!);
      const c32 = runs.reduce((a, b) => ((b.c32?.rps ?? 0) > (a.c32?.rps ?? 0) ? b : a));
      const c1 = runs.reduce((a, b) => ((b.c1?.p50 ?? Infinity) < (a.c1?.p50 ?? Infinity) ? b : a));
      return { ...c32, c1: c1.c1 };
    });
    printHttpTable(best);

    const wsUrl = `${publicUrl.replace("http", "ws")}/ws/echo`;
    const { direct: directWs, proxied: proxiedWs } = await wsRoundTrips({ direct: `ws://${upstream}/ws/echo`, proxied: wsUrl }, cookie);
    console.log(`\nWebSocket round trips, 1 KiB text to /ws/echo (µs), direct and proxied interleaved; load average ${loadAverage()}`);
    console.log(`${"".padEnd(44)}${"p50".padStart(8)}${"p99".padStart(8)}${"p50 +direct".padStart(13)}${"p99 +direct".padStart(13)}`);
    for (const [name, d, p] of [
      ["1,000 sequential on one socket", directWs.one, proxiedWs.one],
      ["10 each on 100 sockets at once", directWs.many, proxiedWs.many],
    ] as const) {
      console.log(`${`${name}, direct`.padEnd(44)}${d.median.toFixed(0).padStart(8)}${d.p99.toFixed(0).padStart(8)}`);
      const plus = (x: number) => `${x >= 0 ? "+" : ""}${x.toFixed(0)}`;
      console.log(
        `${`${name}, hypervisor`.padEnd(44)}${p.median.toFixed(0).padStart(8)}${p.p99.toFixed(0).padStart(8)}` +
          `${plus(p.median - d.median).padStart(13)}${plus(p.p99 - d.p99).padStart(13)}`,
      );
    }

    // Idle sockets: RSS measured after a pause, so what the handshakes left behind has been collected.
    // Each proxied WebSocket holds two of the daemon's descriptors; this process holds one per socket.
    const nofile = Math.min(nofileHard(daemonPid), nofileHard(process.pid));
    const maxSockets = Math.floor((nofile - DAEMON_FD_RESERVE) / 2);
    await sleep(1000);
    const baseline = rssKiB(daemonPid);
    console.log(`\nIdle proxied WebSockets (client and upstream legs each), daemon RSS from ${(baseline / 1024).toFixed(1)} MiB`);
    let previous: { rss: number; open: number } | undefined;
    for (const n of [IDLE_SOCKETS, maxSockets]) {
      await openSockets(wsUrl, cookie, n - sockets.length, sockets);
      await sleep(3000);
      const rss = rssKiB(daemonPid);
      const open = sockets.filter((s) => s.readyState === WebSocket.OPEN).length;
      // The step between the two counts does not depend on what the HTTP runs left for the collector.
      const step = previous ? `; ${((rss - previous.rss) / (open - previous.open)).toFixed(1)} KiB each for the last ${open - previous.open}` : "";
      console.log(
        `${String(open).padStart(6)} open: RSS ${(rss / 1024).toFixed(1)} MiB, ${((rss - baseline) / open).toFixed(1)} KiB per WebSocket${step}` +
          (n === maxSockets ? ` (the most: hard nofile ${nofile}, two fds each, ${DAEMON_FD_RESERVE} kept for the rest)` : ""),
      );
      previous = { rss, open };
    }
    console.log(`load average ${loadAverage()}`);
  } finally {
    for (const s of sockets) s.terminate();
    for (const peer of peers) peer.child?.kill("SIGTERM");
    await daemon.operator.post(`/sandboxes/${testUser("bench")}/live/stop`).catch(() => undefined);
    await daemon.kill("SIGTERM");
    state.remove();
    peersDir.remove();
  }
}

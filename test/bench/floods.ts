import { readFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { WebSocket } from "ws";
import { PublicClient, SoftwareAuthenticator } from "../helpers/authenticator.js";
import { daemonEnv, spawnDaemon, tempDir } from "../helpers/daemon.js";
import { freePort } from "../helpers/ports.js";
import { testUser } from "../helpers/run-id.js";

const ORIGIN = "http://hv.floods";
/** The audit's figures (F10): hung requests one user held, and bridges with a 16 MiB message to a client that does not read. */
const HUNG_REQUESTS = 10_500;
const BRIDGES = 40;
const MESSAGE_BYTES = 16 * 1024 * 1024;
/** Another user's requests during the flood, as the audit counted them. */
const PROBES = 34;

function rssMiB(pid: number): number {
  const kib = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? NaN);
  return kib / 1024;
}

/** The most RSS the daemon reached while `ms` went by. */
async function peakRss(pid: number, ms: number): Promise<number> {
  let most = 0;
  for (const end = Date.now() + ms; Date.now() < end; await sleep(50)) most = Math.max(most, rssMiB(pid));
  return most;
}

/**
 * The audit's two floods against the real daemon (its defaults: HYPERVISOR_USER_MAX_REQUESTS,
 * HYPERVISOR_USER_MAX_WEBSOCKETS), with the daemon's RSS before, at its peak and after, and what
 * another user's requests got meanwhile. Figures, not thresholds: compare runs on one machine.
 */
export async function floodsBench(): Promise<void> {
  const state = tempDir();
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const daemon = await spawnDaemon(daemonEnv(state.path, { HYPERVISOR_LISTEN: `127.0.0.1:${port}`, HYPERVISOR_PUBLIC_ORIGIN: ORIGIN }));
  const pid = daemon.child.pid!;
  const users = [testUser("flood-mallory"), testUser("flood-bob")] as const;
  const cookies: string[] = [];
  const held: Socket[] = [];
  const bridges: WebSocket[] = [];
  try {
    for (const user of users) {
      const client = new PublicClient(url, ORIGIN);
      await client.register(user, new SoftwareAuthenticator(ORIGIN));
      cookies.push(`hv_session=${client.cookie}`);
      await client.get("/whoami");
    }
    const [mallory, bob] = cookies as [string, string];
    const probe = async (): Promise<string> => {
      const failures: string[] = [];
      await Promise.all(
        Array.from({ length: PROBES }, async () => {
          try {
            const res = await fetch(`${url}/whoami`, { headers: { cookie: bob, connection: "close" }, signal: AbortSignal.timeout(10_000) });
            await res.arrayBuffer();
            if (res.status !== 200) failures.push(String(res.status));
          } catch (err) {
            failures.push(((err as Error & { cause?: { code?: string } }).cause?.code ?? (err as Error).name) || "error");
          }
        }),
      );
      return `${failures.length} of ${PROBES} failed${failures.length ? ` (${[...new Set(failures)].join(", ")})` : ""}`;
    };

    const before = rssMiB(pid);
    console.log(`\nF10 floods against the daemon (defaults); RSS at rest ${before.toFixed(0)} MiB`);
    const statuses = new Map<string, number>();
    for (let opened = 0; opened < HUNG_REQUESTS; opened += 500) {
      await Promise.all(
        Array.from({ length: Math.min(500, HUNG_REQUESTS - opened) }, () => {
          const socket = connect(port, "127.0.0.1");
          held.push(socket);
          socket.on("error", () => undefined);
          socket.write(`GET /sse?n=2&interval=600000 HTTP/1.1\r\nHost: hv.floods\r\nCookie: ${mallory}\r\n\r\n`);
          return new Promise<void>((resolve) => {
            let counted = false;
            const seen = (status: string) => {
              if (counted) return;
              counted = true;
              statuses.set(status, (statuses.get(status) ?? 0) + 1);
              resolve();
            };
            socket.once("data", (c: Buffer) => seen(/^HTTP\/1\.1 (\d{3})/.exec(c.toString("latin1"))?.[1] ?? "?"));
            socket.once("close", () => seen("closed"));
            setTimeout(() => seen("no answer in 10 s"), 10_000).unref();
          });
        }),
      );
    }
    const hungPeak = await peakRss(pid, 2000);
    console.log(`${HUNG_REQUESTS} hung requests from one user: ${[...statuses].map(([s, n]) => `${n}× ${s}`).join(", ")}`);
    console.log(`  RSS peak ${hungPeak.toFixed(0)} MiB (+${(hungPeak - before).toFixed(0)}); another user's ${PROBES} requests meanwhile: ${await probe()}`);
    for (const socket of held.splice(0)) socket.destroy();
    await sleep(2000);

    const rest = rssMiB(pid);
    let opened = 0;
    for (let i = 0; i < BRIDGES; i++) {
      const ws = new WebSocket(`${url.replace("http", "ws")}/ws/echo`, { headers: { cookie: mallory, origin: ORIGIN }, perMessageDeflate: false });
      ws.on("error", () => undefined);
      bridges.push(ws);
      const ok = await new Promise<boolean>((resolve) => {
        ws.once("open", () => resolve(true));
        ws.once("unexpected-response", () => resolve(false));
        ws.once("error", () => resolve(false));
      });
      if (!ok) continue;
      opened++;
      // The client stops reading; its sandbox sends it one message of the largest size.
      ws.pause();
      ws.send(`flood:1x${MESSAGE_BYTES}`);
    }
    const bridgePeak = await peakRss(pid, 5000);
    const settled = rssMiB(pid);
    const open = bridges.filter((ws) => ws.readyState === WebSocket.OPEN).length;
    console.log(
      `${BRIDGES} bridges with a 16 MiB message to a client that does not read (${opened} opened, ${open} still open after 5 s): ` +
        `RSS from ${rest.toFixed(0)} MiB, peak ${bridgePeak.toFixed(0)} MiB (+${(bridgePeak - rest).toFixed(0)}), ${settled.toFixed(0)} MiB after 5 s; ` +
        `another user's ${PROBES} requests meanwhile: ${await probe()}`,
    );
  } finally {
    for (const socket of held) socket.destroy();
    for (const ws of bridges) ws.terminate();
    for (const user of users) await daemon.operator.post(`/sandboxes/${user}/live/stop`).catch(() => undefined);
    await daemon.kill("SIGTERM");
    state.remove();
  }
}

import assert from "node:assert/strict";
import { Agent, request, type IncomingMessage } from "node:http";
import { after, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { tempDir } from "../helpers/daemon.js";
import { RestartHarness } from "../helpers/restart-harness.js";
import { testUser } from "../helpers/run-id.js";

interface Outcome {
  status: number;
  connection: string | undefined;
  body: string;
  /** The response ended as sent (false: its connection was cut). */
  complete: boolean;
  endedAt: number;
}

/** A GET through the public listener; `onResponse` sees the response once its headers arrive. */
function get(harness: RestartHarness, path: string, agent: Agent | false, onResponse?: (res: IncomingMessage) => void): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const req = request(`${harness.publicUrl}${path}`, { agent, headers: { cookie: harness.cookie } }, (res) => {
      onResponse?.(res);
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk));
      const done = (complete: boolean) =>
        resolve({ status: res.statusCode ?? 0, connection: res.headers.connection, body, complete, endedAt: performance.now() });
      res.on("end", () => done(res.complete));
      res.on("aborted", () => done(false));
      res.on("error", () => done(false));
    });
    req.on("error", reject);
    req.end();
  });
}

async function until(condition: () => boolean, what: string): Promise<void> {
  for (let waited = 0; !condition(); waited += 10) {
    assert.ok(waited < 10_000, `waited 10 s for ${what}`);
    await sleep(10);
  }
}

describe("SIGTERM with requests in flight (socket-activated daemon, process runtime)", () => {
  const state = tempDir();
  after(() => state.remove());

  it("finishes a slow request, says Connection: close on kept-alive connections and queues new ones for the next daemon", async () => {
    const harness = await RestartHarness.start(state.path, testUser("sigterm-slow"), { HYPERVISOR_SHUTDOWN_GRACE_MS: "5000", HYPERVISOR_LOG_LEVEL: "info" });
    try {
      // A client that sends its next request the moment a response ends, on one kept-alive connection.
      const keepAlive = new Agent({ keepAlive: true, maxSockets: 1 });
      const kept: Outcome[] = [];
      let looping = true;
      const loop = (async () => {
        while (looping) kept.push(await get(harness, "/whoami", keepAlive));
      })();
      await until(() => kept.length >= 5, "a few kept-alive requests");
      let slowStarted!: () => void;
      const inFlight = new Promise<void>((resolve) => (slowStarted = resolve));
      const slow = get(harness, "/sse?n=4&interval=400", false, () => slowStarted());
      await inFlight;

      const sigtermAt = performance.now();
      const exited = harness.daemon.kill("SIGTERM");
      await until(() => harness.daemon.output().includes('"msg":"shutting down"'), "the daemon to start draining");
      // A new connection now waits in the kernel's queue: no daemon accepts until the next one.
      const queued = get(harness, "/whoami", false);

      const finished = await slow;
      assert.deepEqual([finished.status, finished.complete, finished.body.match(/^data: \d+$/gm)?.length], [200, true, 4], "the slow request ran to its end");
      assert.equal(await exited, 0);
      const exitedAt = performance.now();
      assert.ok(exitedAt - sigtermAt < 5000, `stopped ${Math.round(exitedAt - sigtermAt)} ms after SIGTERM, within the grace`);

      await harness.startAgain();
      const answered = await queued;
      assert.equal(answered.status, 200, "the queued connection is served by the next daemon");
      assert.ok(answered.endedAt > exitedAt);
      looping = false;
      await loop;
      keepAlive.destroy();

      assert.deepEqual(
        kept.filter((r) => r.status !== 200),
        [],
        "no kept-alive request failed",
      );
      const last = kept.findIndex((r) => r.connection === "close");
      assert.ok(last >= 5, "the connection's last response said Connection: close");
      assert.ok(kept[last]!.endedAt > sigtermAt && kept[last]!.endedAt < exitedAt, "while the daemon drained");
      assert.ok(kept.slice(0, last).every((r) => r.connection === "keep-alive"));
    } finally {
      await harness.close();
    }
  });

  it("cuts the connection of a request that outlasts the grace, then exits 0", async () => {
    const grace = 1500;
    const harness = await RestartHarness.start(state.path, testUser("sigterm-cut"), { HYPERVISOR_SHUTDOWN_GRACE_MS: String(grace) });
    try {
      let slowStarted!: () => void;
      const inFlight = new Promise<void>((resolve) => (slowStarted = resolve));
      const endless = get(harness, "/sse?n=1000&interval=200", false, () => slowStarted());
      await inFlight;
      const sigtermAt = performance.now();
      const exited = harness.daemon.kill("SIGTERM");
      const cut = await endless;
      assert.equal(cut.complete, false, "the response was cut, not ended as if whole");
      const cutAfter = cut.endedAt - sigtermAt;
      assert.ok(cutAfter >= grace - 100 && cutAfter < grace + 1500, `cut ${Math.round(cutAfter)} ms after SIGTERM (grace ${grace} ms)`);
      assert.equal(await exited, 0);
      await harness.startAgain();
    } finally {
      await harness.close();
    }
  });
});

import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, it } from "node:test";
import { controlPlane, refusal, stopClock, track } from "../../test/helpers/control-plane.js";
import { checkHealth, PROBE_BACKOFF_MS, waitHealthy } from "./health-check.js";

/** A sandbox's /health that never becomes healthy, counting what it is asked. */
async function neverHealthy(body: string): Promise<{ server: Server; port: number; asked: () => number }> {
  let asked = 0;
  const server = createServer((req, res) => {
    if (req.url === "/health") asked++;
    res.writeHead(503, { "content-type": "text/plain" }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, port: (server.address() as AddressInfo).port, asked: () => asked };
}

/** Probes at most: one at once, then one after each pause until the pauses reach their cap, then one per cap. */
function mostProbes(windowMs: number): number {
  let probes = 1;
  let at = 0;
  for (let pause: number = PROBE_BACKOFF_MS.first; at + pause < windowMs; pause = Math.min(pause * 2, PROBE_BACKOFF_MS.max)) {
    at += pause;
    probes++;
  }
  return probes;
}

describe("health probes", () => {
  it("back off while a sandbox over HTTP stays unhealthy, and say what it answered, in one printable line", async (t) => {
    const sandbox = await neverHealthy(`database not ready\n\x1b[2J\x1b[31mretrying${"x".repeat(400)}`);
    t.after(() => sandbox.server.close());
    const endpoint = { host: "127.0.0.1", port: sandbox.port };
    const answers: string[] = [];
    const outcome = await waitHealthy(endpoint, Date.now() + 1600, undefined, undefined, (_, answer) => answers.push(answer.said));
    assert.equal(outcome, "timeout");
    // The backoff bounds the count from above whatever the machine's speed: 6 probes in 1.6 s, where a fixed 25 ms poll asked ~60.
    assert.ok(sandbox.asked() <= mostProbes(1600), `asked ${sandbox.asked()} times, at most ${mostProbes(1600)} expected`);
    assert.ok(sandbox.asked() >= 2, "it kept asking");
    assert.equal(answers.length, sandbox.asked());
    const said = answers.at(-1)!;
    assert.match(said, /^HTTP 503: database not ready \[2J \[31mretryingx+\.\.\.$/);
    assert.ok(said.length < 160, "a short excerpt, not the whole body");

    await new Promise<void>((resolve) => sandbox.server.close(() => resolve()));
    assert.deepEqual(await checkHealth(endpoint), { healthy: false, said: "connection refused (nothing listens on its port yet)" });
  });

  it("share one request among concurrent askers of one sandbox", async (t) => {
    const sandbox = await neverHealthy("no");
    t.after(() => sandbox.server.close());
    const endpoint = { host: "127.0.0.1", port: sandbox.port };
    const answers = await Promise.all(Array.from({ length: 10 }, () => checkHealth(endpoint)));
    assert.equal(sandbox.asked(), 1);
    assert.ok(answers.every((a) => a.said === "HTTP 503: no"));
  });

  it("ask a sandbox that never becomes healthy about once a second at most, and the start's timeout names the last answer", async (t) => {
    const { runtime, manager } = await controlPlane(t, { users: ["alice"], config: { startTimeoutMs: 30_000 } });
    const clock = stopClock(t);
    runtime.setHealthy("alice", "a", false);
    const ensure = track(manager.ensure("alice", "live"));
    await clock.runUntil(ensure.done, 50);
    await assert.rejects(ensure.promise, refusal("start_timeout", /within 30000 ms; GET \/health last answered: HTTP 503: set unhealthy by the test$/));
    // Counted on the sandbox's side: the fake logs each probe it is asked, as a GET.
    let probes = 0;
    for await (const line of runtime.logs("alice", "a", { tail: 10_000, follow: false })) if (line.includes("GET /health")) probes++;
    assert.ok(probes <= mostProbes(30_000), `probed ${probes} times in 30 s, at most ${mostProbes(30_000)} expected (1,200 at the old fixed 25 ms)`);
    assert.ok(probes >= 30, `probed ${probes} times: it kept asking until the timeout`);
  });
});

import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { loadConfig } from "../../hypervisor/config.js";
import { startDaemon, type Daemon } from "../../hypervisor/daemon.js";
import { createLogger } from "../../hypervisor/logger.js";
import { FakeRuntime } from "../../hypervisor/runtime/fake-runtime.js";
import { daemonEnv, tempDir } from "../helpers/daemon.js";
import { OperatorClient } from "../helpers/operator-client.js";
import { testUser } from "../helpers/run-id.js";

interface LogLine {
  msg: string;
  requestId?: string;
  [key: string]: unknown;
}

describe("one operator call followed by its request id", () => {
  const dir = tempDir();
  const lines: LogLine[] = [];
  const runtime = new FakeRuntime();
  let daemon: Daemon;
  let operator: OperatorClient;
  const user = testUser("reqid");

  before(async () => {
    const config = loadConfig(daemonEnv(dir.path, { HYPERVISOR_LOG_LEVEL: "info" }));
    // The daemon's log lines as it writes them: one JSON object per line.
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString("utf8").split("\n")) if (line.trim()) lines.push(JSON.parse(line) as LogLine);
        done();
      },
    });
    daemon = await startDaemon(config, createLogger(config.logLevel, sink), { runtime });
    operator = new OperatorClient({ socketPath: daemon.operatorSocket });
    assert.equal((await operator.post("/users", { name: user })).status, 201);
  });

  after(async () => {
    await daemon?.close();
    dir.remove();
  });

  it("names the same id in the answer's header, its error body, its log lines and its audit row", async () => {
    runtime.setAvailable(false);
    const res = await operator.post<{ error: { code: string; requestId: string } }>(`/sandboxes/${user}/live/start`);
    runtime.setAvailable(true);
    assert.equal(res.status, 503, JSON.stringify(res.body));
    const id = res.body.error.requestId;
    assert.match(id, /^[0-9a-f-]{36}$/);
    assert.equal(res.headers["x-request-id"], id, "the header and the body name one id");

    const logged = lines.filter((l) => l.requestId === id);
    assert.ok(
      logged.some((l) => l.msg === "request failed" && l.code === "runtime_unavailable"),
      `the failure is logged with the call's id: ${JSON.stringify(lines.slice(-5))}`,
    );

    const audit = await operator.get<{ entries: { action: string; target: string; outcome: string; details: Record<string, unknown> | null }[] }>(
      "/audit?limit=20",
    );
    const row = audit.body.entries.find((e) => e.action === "sandbox.start" && e.target === `${user}/live`);
    assert.deepEqual([row?.outcome, row?.details?.code, row?.details?.requestId], ["error", "runtime_unavailable", id]);
  });

  it("names the call's id on the lines the services it calls write, not only the route's", async () => {
    const res = await operator.post(`/sandboxes/${user}/live/start`);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const id = res.headers["x-request-id"];
    const started = lines.filter((l) => l.msg === "sandbox started" && l.user === user && l.slot !== undefined);
    assert.ok(started.length > 0, `the sandbox manager logged the start: ${JSON.stringify(lines.slice(-5))}`);
    assert.equal(started.at(-1)!.requestId, id, "the manager's line names the operator call it served");
    const adopted = lines.find((l) => l.msg === "sandboxes adopted");
    assert.ok(adopted, "the daemon's own start logged its adoption");
    assert.equal(adopted.requestId, undefined, "a line written for no request names none");
    assert.equal((await operator.post(`/sandboxes/${user}/live/stop`)).status, 200);
  });

  it("gives every call an id of its own, in its audit row too when it succeeds", async () => {
    const first = await operator.post(`/sandboxes/${user}/dev/start`);
    const second = await operator.post(`/sandboxes/${user}/dev/stop`);
    assert.deepEqual([first.status, second.status], [200, 200]);
    const ids = [first.headers["x-request-id"], second.headers["x-request-id"]];
    assert.notEqual(ids[0], ids[1]);

    const audit = await operator.get<{ entries: { action: string; target: string; details: Record<string, unknown> | null }[] }>("/audit?limit=20");
    const rowOf = (action: string) => audit.body.entries.find((e) => e.action === action && e.target === `${user}/dev`);
    assert.deepEqual([rowOf("sandbox.start")?.details?.requestId, rowOf("sandbox.stop")?.details?.requestId], ids);
  });
});

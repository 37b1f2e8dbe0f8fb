import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, it, type TestContext } from "node:test";
import { Writable } from "node:stream";
import { OpenAPIHono } from "@hono/zod-openapi";
import { getRequestListener } from "@hono/node-server";
import { requestId } from "hono/request-id";
import { HypervisorError } from "../errors.js";
import { installErrorHandling, requestLogger } from "../http/error-handling.js";
import type { CommandContext } from "../hypervisorctl/command.js";
import { followBatch, tally } from "../hypervisorctl/follow-batch.js";
import { ApiError, ConnectionError, OperatorConnection } from "../hypervisorctl/operator-connection.js";
import { createLogger } from "../logger.js";
import { batchResponse, type BatchResponseOptions, type BatchRun } from "./batch-response.js";
import type { OperatorEnv } from "./operator-env.js";
import type { UserOutcome } from "../operations/batch.js";

interface Result extends UserOutcome {
  to?: string;
}
interface Progress {
  user: string;
  phase: string;
}

const ok = (user: string): Result => ({ user, ok: true, durationMs: 5, to: "b" });
const failed = (user: string): Result => ({ user, ok: false, durationMs: 7, error: { code: "unhealthy_target", message: "dev failed its health check" } });

/** A log that keeps what it is given, to see what a failed batch logs. */
function keptLog() {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(JSON.parse(chunk.toString("utf8")) as Record<string, unknown>);
      done();
    },
  });
  return { log: createLogger("info", sink), lines };
}

function batchApp(run: BatchRun<Result, Progress>, options: Partial<BatchResponseOptions> = {}) {
  const app = new OpenAPIHono<OperatorEnv>();
  const { log, lines } = keptLog();
  installErrorHandling(app, log);
  app.use(requestId(), requestLogger(log));
  app.post("/batch", (c) => batchResponse(c, run, { action: "test.batch", ...options }));
  // A progress stream that stops before its summary, as a daemon that went away would leave it.
  app.post("/cut", () => new Response(`${JSON.stringify({ type: "result", ...ok("alice") })}\n`, { headers: { "content-type": "application/x-ndjson" } }));
  return { app, logged: lines };
}

const ndjson = { accept: "application/x-ndjson" };
const linesOf = (text: string) =>
  text
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);

describe("batchResponse: one answer for every per-user batch", () => {
  it("streams each progress and result line as it happens, then the summary", async () => {
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const { app } = batchApp(async (on) => {
      on.progress({ user: "alice", phase: "starting" });
      on.result(ok("alice"));
      await gate;
      on.result(failed("bob"));
      return [ok("alice"), failed("bob")];
    });
    const res = await app.request("/batch", { method: "POST", headers: ndjson });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "application/x-ndjson");
    assert.equal(res.headers.get("cache-control"), "no-store");
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let early = "";
    while (early.split("\n").length < 3) early += (await reader.read()).value;
    // Alice's lines are out while bob's step still runs.
    assert.deepEqual(linesOf(early), [
      { type: "progress", user: "alice", phase: "starting" },
      { type: "result", ...ok("alice") },
    ]);
    open();
    let rest = "";
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) rest += chunk.value;
    const [bob, summary] = linesOf(rest);
    assert.deepEqual(bob, { type: "result", ...failed("bob") });
    assert.deepEqual(Object.keys(summary!), ["type", "ok", "durationMs", "users", "failed"]);
    assert.deepEqual({ ...summary, durationMs: 0 }, { type: "summary", ok: false, durationMs: 0, users: 2, failed: 1 });
  });

  it("ends the stream with the error shape when the batch is refused as a whole after the stream began", async () => {
    const { app, logged } = batchApp(async () => {
      throw new HypervisorError("not_found", "no generation 9");
    });
    const res = await app.request("/batch", { method: "POST", headers: ndjson });
    assert.equal(res.status, 200);
    const [line, ...more] = linesOf(await res.text()) as Array<{ type: string; error: { code: string; message: string; requestId: string } }>;
    assert.deepEqual([line!.type, line!.error.code, line!.error.message, more], ["error", "not_found", "no generation 9", []]);
    assert.match(line!.error.requestId, /^[\w-]{8,}$/);
    assert.equal(logged.length, 0, "a refusal is the caller's business, not the log's");
  });

  it("says only 'internal error' of a fault in the stream, and logs the fault with the request's id", async () => {
    const { app, logged } = batchApp(async () => {
      throw new Error("SQLITE_BUSY at /var/lib/hypervisor/state.db");
    });
    const res = await app.request("/batch", { method: "POST", headers: ndjson });
    const [line] = linesOf(await res.text()) as Array<{ error: { requestId: string } }>;
    const id = line!.error.requestId;
    assert.deepEqual(line, { type: "error", error: { code: "internal", message: "internal error", requestId: id } });
    assert.match(id, /^[\w-]{8,}$/);
    assert.deepEqual(
      logged.map((l) => [l.msg, l.action, l.requestId]),
      [["batch failed", "test.batch", id]],
    );
  });

  it("answers JSON when it is done: 200 when every user succeeded, 207 with every result when some failed", async () => {
    const all = await batchApp(async () => [ok("alice"), ok("bob")]).app.request("/batch", { method: "POST" });
    assert.equal(all.status, 200);
    const body = (await all.json()) as Record<string, unknown>;
    assert.deepEqual(Object.keys(body), ["ok", "durationMs", "results"]);
    assert.deepEqual({ ...body, durationMs: 0 }, { ok: true, durationMs: 0, results: [ok("alice"), ok("bob")] });

    const some = await batchApp(async () => [ok("alice"), failed("bob")]).app.request("/batch", { method: "POST" });
    assert.equal(some.status, 207);
    assert.deepEqual(((await some.json()) as { results: Result[] }).results, [ok("alice"), failed("bob")]);
  });

  it("answers a failed call for one user with that failure's own status when asked to, with 207 otherwise", async () => {
    const run: BatchRun<Result, Progress> = async () => [failed("bob")];
    const sole = await batchApp(run, { soleFailureAsError: true }).app.request("/batch", { method: "POST" });
    assert.equal(sole.status, 409);
    const { error } = (await sole.json()) as { error: { code: string; message: string; details: { results: Result[] } } };
    assert.deepEqual([error.code, error.message, error.details.results], ["unhealthy_target", "dev failed its health check", [failed("bob")]]);

    const plain = await batchApp(run).app.request("/batch", { method: "POST" });
    assert.equal(plain.status, 207);
  });
});

describe("followBatch against batchResponse, over a real connection", () => {
  /** The app on a loopback port for this test, and a CLI context that keeps what it prints. */
  async function serve(t: TestContext, run: BatchRun<Result, Progress>, json = false) {
    const listener = getRequestListener(batchApp(run).app.fetch);
    // Hono's node listener answers its own failures and never rejects.
    const server = createServer((req, res) => void listener(req, res));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const port = (server.address() as AddressInfo).port;
    let printed = "";
    const ctx: CommandContext = { api: new OperatorConnection({ url: new URL(`http://127.0.0.1:${port}`) }), json, out: (text) => void (printed += text) };
    return { ctx, printed: () => printed };
  }
  const view = {
    name: "swap",
    width: 8,
    progress: (p: Progress) => [p.phase],
    succeeded: (r: Result) => [`→${r.to}`, `${r.durationMs} ms`],
    summary: (s: Parameters<typeof tally>[1]) => tally("swap", s, "ok"),
  };

  it("prints each line as the batch tells it, the user column widening, then the summary; exit 1 when a user failed", async (t) => {
    const { ctx, printed } = await serve(t, async (on) => {
      on.progress({ user: "alice", phase: "starting" });
      on.result(ok("alice"));
      on.result(failed("bartholomew"));
      on.result(ok("cy"));
      return [ok("alice"), failed("bartholomew"), ok("cy")];
    });
    assert.equal(await followBatch(ctx, "/batch", {}, view), 1);
    const lines = printed().split("\n");
    assert.deepEqual(lines.slice(0, 4), [
      "… alice     starting",
      "✓ alice     →b  5 ms",
      "✗ bartholomew  unhealthy_target: dev failed its health check  7 ms",
      "✓ cy           →b  5 ms",
    ]);
    assert.match(lines[4]!, /^swap: 2 of 3 users ok, 1 failed in \d+ ms$/);
    assert.equal(lines[5], "");
  });

  it("with --json prints the JSON answer as is, exit 0 when every user succeeded", async (t) => {
    const { ctx, printed } = await serve(t, async () => [ok("alice")], true);
    assert.equal(await followBatch(ctx, "/batch", {}, view), 0);
    const body = JSON.parse(printed()) as { ok: boolean; results: Result[] };
    assert.deepEqual([body.ok, body.results], [true, [ok("alice")]]);
    assert.ok(printed().endsWith("}\n"));
  });

  it("throws a batch refused after the stream began as the API's error, with its request id", async (t) => {
    const { ctx } = await serve(t, async () => {
      throw new HypervisorError("no_known_good", "no known-good generation");
    });
    await assert.rejects(followBatch(ctx, "/batch", {}, view), (err: unknown) => {
      assert.ok(err instanceof ApiError);
      assert.deepEqual([err.code, err.message], ["no_known_good", "no known-good generation"]);
      assert.match(err.requestId, /^[\w-]{8,}$/);
      return true;
    });
  });

  it("says the outcome is unknown when the stream ends without its summary", async (t) => {
    const { ctx, printed } = await serve(t, async () => []);
    await assert.rejects(followBatch(ctx, "/cut", {}, view), (err: unknown) => {
      assert.ok(err instanceof ConnectionError);
      assert.match(err.message, /^the swap progress stream ended without a summary: the outcome is unknown/);
      return true;
    });
    assert.equal(printed(), "✓ alice     →b  5 ms\n");
  });
});

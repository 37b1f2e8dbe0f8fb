import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { describe, it } from "node:test";
import { Hono } from "hono";
import { requestId } from "hono/request-id";
import { HypervisorError } from "../errors.js";
import { createLogger } from "../logger.js";
import { installErrorHandling, requestLogger, type AppEnv } from "./error-handling.js";

/** A Hono app wired as both of the daemon's are, whose log lines are kept. */
function app(): { app: Hono<AppEnv>; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(JSON.parse(chunk.toString("utf8")) as Record<string, unknown>);
      done();
    },
  });
  const log = createLogger("info", sink);
  const app = new Hono<AppEnv>();
  installErrorHandling(app, log);
  app.use(requestId(), requestLogger(log));
  app.get("/work", (c) => {
    c.get("log").info({ step: 1 }, "working");
    c.get("log").info({ step: 2 }, "still working");
    return c.text("done");
  });
  app.get("/fail", (c) => {
    c.get("log").info("about to fail");
    throw new HypervisorError("runtime_unavailable", "gone");
  });
  return { app, lines };
}

describe("requestLogger", () => {
  it("writes the request's id on every line its handler logs, the id the answer names", async () => {
    const { app: a, lines } = app();
    const first = await a.request("/work");
    const second = await a.request("/work");
    const ids = [first.headers.get("x-request-id"), second.headers.get("x-request-id")];
    assert.ok(ids[0] && ids[1] && ids[0] !== ids[1], "an id per request");
    assert.deepEqual(
      lines.map((l) => [l.msg, l.requestId]),
      [
        ["working", ids[0]],
        ["still working", ids[0]],
        ["working", ids[1]],
        ["still working", ids[1]],
      ],
    );
  });

  it("names the same id in a failed request's log lines and its error body", async () => {
    const { app: a, lines } = app();
    const res = await a.request("/fail");
    const body = (await res.json()) as { error: { requestId: string } };
    assert.equal(res.status, 503);
    assert.equal(body.error.requestId, res.headers.get("x-request-id"));
    assert.deepEqual(
      lines.map((l) => [l.msg, l.requestId]),
      [
        ["about to fail", body.error.requestId],
        ["request failed", body.error.requestId],
      ],
    );
  });
});

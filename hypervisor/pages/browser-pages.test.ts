import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Target } from "../../proxy/target.js";
import { HypervisorError } from "../errors.js";
import { BrowserPages } from "./browser-pages.js";

const publicOrigin = new URL("https://hv.example.org");
const failed = () => new HypervisorError("start_timeout", "sandbox hv-alice-b did not become healthy within 30000 ms", { retryAfterSeconds: 30 });
/** A start the test settles by hand. */
function start(): { started: Promise<Target>; fail(): Promise<void>; succeed(): Promise<void> } {
  let resolve!: (t: Target) => void;
  let reject!: (e: unknown) => void;
  const started = new Promise<Target>((res, rej) => ((resolve = res), (reject = rej)));
  const settled = () =>
    started.then(
      () => undefined,
      () => undefined,
    );
  return {
    started,
    fail: () => (reject(failed()), settled()),
    succeed: () => (resolve({ user: "alice", slot: "b", endpoint: { host: "127.0.0.1", port: 1 }, generationId: 1 }), settled()),
  };
}

describe("pages for browsers", () => {
  it("renders a refusal with links back to the public origin, which also serves its style", () => {
    const page = new BrowserPages({ publicOrigin, sandboxOrigins: true }).error(failed(), "req-1");
    assert.match(page.headers["content-type"]!, /^text\/html/);
    assert.match(page.headers["content-security-policy"]!, /style-src 'self' https:\/\/hv\.example\.org/);
    assert.match(page.body, /<h1>Your sandbox did not start<\/h1>/);
    assert.match(page.body, /href="https:\/\/hv\.example\.org\/_hv\/account"/);
    assert.match(page.body, /href="https:\/\/hv\.example\.org\/_hv\/assets\/auth\.css"/);
    assert.match(page.body, /<code id="request-id">req-1<\/code>/);
    assert.match(page.body, /Trying again in 30 s may work/);
    assert.match(page.body, /id="retry"/, "a failed start may succeed when tried again");
    assert.doesNotMatch(page.body, /<script/, "an error page needs no script");
  });

  it("offers 'Try again' only where trying again can help", () => {
    const pages = new BrowserPages({ publicOrigin, sandboxOrigins: false });
    const offered = (err: HypervisorError) => /id="retry"/.test(pages.error(err, "r").body);
    assert.equal(offered(new HypervisorError("validation_failed", "role: live or dev")), false, "400");
    assert.equal(offered(new HypervisorError("not_found", "nothing here")), false, "404");
    assert.equal(offered(new HypervisorError("forbidden", "not yours")), false, "403");
    assert.equal(offered(new HypervisorError("rate_limited", "slow down")), true, "429");
    assert.equal(offered(new HypervisorError("upstream_unreachable", "no answer")), true, "502");
    assert.equal(offered(new HypervisorError("runtime_unavailable", "podman is down")), true, "503");
  });

  it("escapes what a message carries", () => {
    const page = new BrowserPages({ publicOrigin, sandboxOrigins: false }).error(new HypervisorError("not_found", "no route for GET /<script>"), "r");
    assert.doesNotMatch(page.body, /\/<script>/);
    assert.match(page.body, /&lt;script&gt;/);
  });

  it("reports a start's failure to the starting page sent before it, and not to a later one", async () => {
    let now = 1000;
    const pages = new BrowserPages({ publicOrigin, sandboxOrigins: false }, () => now);
    const s = start();
    const page = pages.starting("alice", "dev", s.started);
    assert.match(page.body, /data-since="1000"/);
    assert.match(page.body, /<script src="https:\/\/hv\.example\.org\/_hv\/assets\/auth\.js"/, "path mode: the script follows the start");
    now = 2000;
    await s.fail();
    assert.equal(pages.failureSince("alice", "dev", 1000)?.code, "start_timeout");
    assert.equal(pages.failureSince("alice", "dev", 2001), undefined);
    assert.equal(pages.failureSince("alice", "live", 0), undefined, "only that role's");

    const again = start();
    pages.watch("alice", "dev", again.started);
    await again.succeed();
    assert.equal(pages.failureSince("alice", "dev", 0), undefined, "a later success clears it");
  });

  it("on a sandbox origin, reloads itself and shows a failure that has just happened instead of starting unseen", async () => {
    let now = 1000;
    const pages = new BrowserPages({ publicOrigin, sandboxOrigins: true }, () => now);
    const first = start();
    const page = pages.starting("alice", "live", first.started);
    assert.match(page.body, /<meta http-equiv="refresh" content="2"/);
    assert.doesNotMatch(page.body, /<script/, "a sandbox origin cannot ask the public origin's status route");
    await first.fail();
    now = 3000;
    assert.match(pages.starting("alice", "live", start().started).body, /<h1>Your sandbox did not start<\/h1>/);
    now = 60_000;
    assert.match(pages.starting("alice", "live", start().started).body, /Starting your live sandbox/, "a retry later starts again");
  });
});

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { launchPath, SandboxOrigins } from "./sandbox-origins.js";

describe("SandboxOrigins", () => {
  const local = new SandboxOrigins(new URL("http://localhost:8080"), "localhost");
  const prod = new SandboxOrigins(new URL("https://hv.example.org"), "sandboxes.example.net");

  it("reads user and role from a sandbox host on the public origin's port, case-insensitively", () => {
    assert.deepEqual(local.hostOf("live-alice.localhost:8080"), { user: "alice", role: "live" });
    assert.deepEqual(local.hostOf("DEV-Alice.LOCALHOST:8080"), { user: "alice", role: "dev" });
    assert.deepEqual(prod.hostOf("dev-a-1.sandboxes.example.net"), { user: "a-1", role: "dev" });
  });

  it("leaves hosts outside the domain to the public origin and refuses malformed ones inside it", () => {
    for (const host of [undefined, "localhost:8080", "127.0.0.1:8080", "hv.example.org", "live-alice.example.org"]) {
      assert.equal(local.hostOf(host) ?? prod.hostOf(host), undefined, String(host));
    }
    for (const host of [
      "live-alice.localhost:9090",
      "live-alice.localhost",
      "foo.localhost:8080",
      "live-.localhost:8080",
      "x.live-a.localhost:8080",
      "live--a.localhost:8080x",
    ]) {
      assert.equal(local.hostOf(host), "unknown", host);
    }
    assert.equal(prod.hostOf("live-alice.sandboxes.example.net:443"), "unknown", "a browser leaves out the default port");
  });

  it("builds each sandbox's origin with the public origin's scheme and port, and the launch link to it", () => {
    assert.equal(local.originOf({ user: "alice", role: "dev" }), "http://dev-alice.localhost:8080");
    assert.equal(prod.originOf({ user: "alice", role: "live" }), "https://live-alice.sandboxes.example.net");
    assert.equal(local.launchUrl("live", "/"), "http://localhost:8080/_hv/launch?role=live");
    assert.equal(launchPath("dev", "/a?b=1"), "/_hv/launch?role=dev&next=%2Fa%3Fb%3D1");
  });
});

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, it } from "node:test";
import { boundsOf, ConfigError, configVariables, loadConfig, type BoundedVariable } from "./config.js";

const main = fileURLToPath(new URL("./main.js", import.meta.url));

describe("configuration", () => {
  it("gives the documented defaults", () => {
    const c = loadConfig({});
    assert.deepEqual(c.listen, { host: "127.0.0.1", port: 8080 });
    assert.equal(c.publicOrigin.origin, "http://localhost:8080");
    assert.equal(c.rpId, "localhost");
    assert.equal(c.runtime, "process");
    assert.equal(c.sandboxLimits.memoryBytes, 512 * 1024 * 1024);
    assert.equal(c.sandboxLimits.nanoCpus, 1e9);
    assert.equal(c.operatorSocket, join(c.stateDir, "operator.sock"));
    assert.equal(c.drainMs, 30_000);
    assert.equal(c.shutdownGraceMs, 10_000);
    assert.equal(c.sandboxDomain, undefined, "path mode unless a sandbox domain is set");
    assert.equal(loadConfig({ HYPERVISOR_SANDBOX_DOMAIN: "localhost" }).sandboxDomain, "localhost");
    // Beside the state dir, as ./sandboxes beside ./var, never inside it.
    assert.equal(c.sandboxDataDir, join(dirname(c.stateDir), "sandboxes"));
    assert.equal(c.processUncontained, false);
    assert.equal(loadConfig({ HYPERVISOR_STATE_DIR: "/srv/hv", HYPERVISOR_SANDBOX_DATA_DIR: "/srv/hv-sandboxes" }).sandboxDataDir, "/srv/hv-sandboxes");
    assert.equal(loadConfig({ HYPERVISOR_PROCESS_UNCONTAINED: "accept" }).processUncontained, true);
    assert.equal(c.processNetwork, "10.252.0.0/16");
    assert.equal(loadConfig({ HYPERVISOR_PROCESS_NETWORK: "192.168.40.0/24" }).processNetwork, "192.168.40.0/24");
    assert.equal(c.trustedProxies.size, 0, "no trusted proxies: the socket peer is the client");
    assert.deepEqual([c.userMaxRequests, c.userMaxWebSockets], [256, 64]);
    const set = loadConfig({ HYPERVISOR_USER_MAX_REQUESTS: "8", HYPERVISOR_USER_MAX_WEBSOCKETS: "2" });
    assert.deepEqual([set.userMaxRequests, set.userMaxWebSockets], [8, 2]);
  });

  it("derives the origin from a listener set alone, and the listener from a plain-http origin set alone", () => {
    const listener = loadConfig({ HYPERVISOR_LISTEN: "127.0.0.1:18471" });
    assert.equal(listener.publicOrigin.origin, "http://localhost:18471");
    assert.equal(listener.rpId, "localhost");
    const origin = loadConfig({ HYPERVISOR_PUBLIC_ORIGIN: "http://localhost:18472" });
    assert.deepEqual(origin.listen, { host: "127.0.0.1", port: 18472 });
    assert.deepEqual(loadConfig({ HYPERVISOR_PUBLIC_ORIGIN: "http://hv.localhost" }).listen, { host: "127.0.0.1", port: 80 });
    // An https origin is a TLS front's: the daemon behind it keeps its own default listener.
    assert.deepEqual(loadConfig({ HYPERVISOR_PUBLIC_ORIGIN: "https://sandbox.example.org" }).listen, { host: "127.0.0.1", port: 8080 });
    // Both given: both kept, whatever they say.
    const both = loadConfig({ HYPERVISOR_LISTEN: "0.0.0.0:9000", HYPERVISOR_PUBLIC_ORIGIN: "https://sandbox.example.org" });
    assert.deepEqual(both.listen, { host: "0.0.0.0", port: 9000 });
    assert.equal(both.publicOrigin.origin, "https://sandbox.example.org");
    // Port 0 names no port a browser could open: the default origin stays.
    assert.equal(loadConfig({ HYPERVISOR_LISTEN: "127.0.0.1:0" }).publicOrigin.origin, "http://localhost:8080");
  });

  it("parses the egress mode, allow list and gateway address (DESIGN §5b)", () => {
    const c = loadConfig({});
    assert.equal(c.egress, "gateway");
    assert.ok(c.egressAllow.isEmpty);
    assert.deepEqual(c.egressListen, { host: "10.253.0.1", port: 3128 });
    assert.equal(c.egressRemoteListen, undefined, "no listener for remote hosts unless asked");
    assert.deepEqual(loadConfig({ HYPERVISOR_EGRESS_REMOTE_LISTEN: "10.0.0.1:3129" }).egressRemoteListen, { host: "10.0.0.1", port: 3129 });
    const d = loadConfig({ HYPERVISOR_EGRESS: "open", HYPERVISOR_EGRESS_ALLOW: "api.example.org,10.9.0.0/16", HYPERVISOR_EGRESS_LISTEN: "10.254.0.1:3000" });
    assert.equal(d.egress, "open");
    assert.ok(d.egressAllow.allowsName("api.example.org"));
    assert.equal(d.egressAllow.verdict("10.9.1.1"), undefined);
    for (const [env, variable, message] of [
      [{ HYPERVISOR_EGRESS: "direct" }, "HYPERVISOR_EGRESS", /one of gateway, none, open/],
      [{ HYPERVISOR_EGRESS_ALLOW: "169.254.0.0/16" }, "HYPERVISOR_EGRESS_ALLOW", /never allowed/],
      [{ HYPERVISOR_EGRESS_ALLOW: "*" }, "HYPERVISOR_EGRESS_ALLOW", /\*\.suffix/],
      [{ HYPERVISOR_EGRESS_LISTEN: "127.0.0.1:3128" }, "HYPERVISOR_EGRESS_LISTEN", /not loopback/],
      [{ HYPERVISOR_EGRESS_LISTEN: "0.0.0.0:3128" }, "HYPERVISOR_EGRESS_LISTEN", /not loopback/],
      [{ HYPERVISOR_EGRESS_LISTEN: "[fd00::1]:3128" }, "HYPERVISOR_EGRESS_LISTEN", /IPv4/],
      [{ HYPERVISOR_EGRESS_REMOTE_LISTEN: "0.0.0.0:3129" }, "HYPERVISOR_EGRESS_REMOTE_LISTEN", /not loopback, link-local or 0\.0\.0\.0/],
      [{ HYPERVISOR_EGRESS_REMOTE_LISTEN: "169.254.1.1:3129" }, "HYPERVISOR_EGRESS_REMOTE_LISTEN", /not loopback/],
      [{ HYPERVISOR_EGRESS_REMOTE_LISTEN: "gateway.example.org:3129" }, "HYPERVISOR_EGRESS_REMOTE_LISTEN", /IPv4/],
    ] as const) {
      assert.throws(
        () => loadConfig(env),
        (err: unknown) => err instanceof ConfigError && err.variable === variable && message.test(err.message),
        variable,
      );
    }
  });

  it("parses HYPERVISOR_TRUSTED_PROXIES once into IPv4 and IPv6 blocks", () => {
    const c = loadConfig({ HYPERVISOR_TRUSTED_PROXIES: "127.0.0.1/32, ::1/128,10.0.0.0/8 fd00::/8" });
    assert.equal(c.trustedProxies.size, 4);
    assert.ok(c.trustedProxies.has("10.20.30.40") && c.trustedProxies.has("fd12::1") && c.trustedProxies.has("::ffff:127.0.0.1"));
    assert.ok(!c.trustedProxies.has("192.0.2.1"));
  });

  it("refuses a wrong value with a message naming the variable and what it expects", () => {
    const cases: [Record<string, string>, string, RegExp][] = [
      [{ HYPERVISOR_LISTEN: "8080" }, "HYPERVISOR_LISTEN", /host:port/],
      [{ HYPERVISOR_RUNTIME: "docker" }, "HYPERVISOR_RUNTIME", /^HYPERVISOR_RUNTIME: expected one of process, podman, got "docker"$/],
      [{ HYPERVISOR_REGISTRATION: "public" }, "HYPERVISOR_REGISTRATION", /expected one of open, invite, closed, got/],
      [{ HYPERVISOR_PUBLIC_ORIGIN: "http://127.0.0.1:8080" }, "HYPERVISOR_PUBLIC_ORIGIN", /not an IP address: passkeys \(WebAuthn\) need a domain/],
      [{ HYPERVISOR_PUBLIC_ORIGIN: "https://[2001:db8::1]" }, "HYPERVISOR_PUBLIC_ORIGIN", /use https:\/\/localhost, got/],
      [{ HYPERVISOR_PUBLIC_ORIGIN: "https://x.org/path" }, "HYPERVISOR_PUBLIC_ORIGIN", /origin/],
      [{ HYPERVISOR_PUBLIC_ORIGIN: "https://a.example.org", HYPERVISOR_RP_ID: "evil.org" }, "HYPERVISOR_RP_ID", /parent domain/],
      [{ HYPERVISOR_SANDBOX_MEMORY: "lots" }, "HYPERVISOR_SANDBOX_MEMORY", /512m/],
      [{ HYPERVISOR_SANDBOX_ENV: "PORT=1" }, "HYPERVISOR_SANDBOX_ENV", /K=V/],
      [{ HYPERVISOR_DRAIN_MS: "-5" }, "HYPERVISOR_DRAIN_MS", /whole number/],
      [{ HYPERVISOR_SHUTDOWN_GRACE_MS: "10s" }, "HYPERVISOR_SHUTDOWN_GRACE_MS", /whole number/],
      [{ HYPERVISOR_SANDBOX_DOMAIN: "https://sandboxes.example.org" }, "HYPERVISOR_SANDBOX_DOMAIN", /domain name/],
      [{ HYPERVISOR_SANDBOX_DOMAIN: "Sandboxes.example.org" }, "HYPERVISOR_SANDBOX_DOMAIN", /lower-case/],
      [{ HYPERVISOR_PUBLIC_ORIGIN: "https://live-x.example.org", HYPERVISOR_SANDBOX_DOMAIN: "example.org" }, "HYPERVISOR_SANDBOX_DOMAIN", /no sandbox host/],
      [{ HYPERVISOR_OPERATOR_LISTEN: "127.0.0.1:9000" }, "HYPERVISOR_OPERATOR_TOKEN_FILE", /token file/],
      [{ HYPERVISOR_OPERATOR_TOKEN_FILE: "/nonexistent/token" }, "HYPERVISOR_OPERATOR_TOKEN_FILE", /readable file/],
      [{ HYPERVISOR_STATE_DIR: "/srv/hv", HYPERVISOR_SANDBOX_DATA_DIR: "/srv/hv/sandboxes" }, "HYPERVISOR_SANDBOX_DATA_DIR", /outside the state dir/],
      [{ HYPERVISOR_STATE_DIR: "/srv/hv/state", HYPERVISOR_SANDBOX_DATA_DIR: "/srv/hv" }, "HYPERVISOR_SANDBOX_DATA_DIR", /does not contain it/],
      [{ HYPERVISOR_STATE_DIR: "/srv/hv", HYPERVISOR_SANDBOX_DATA_DIR: "/srv/hv" }, "HYPERVISOR_SANDBOX_DATA_DIR", /outside the state dir/],
      [
        { HYPERVISOR_SANDBOX_DATA_DIR: "/srv/data", HYPERVISOR_OPERATOR_SOCKET: "/srv/data/op.sock" },
        "HYPERVISOR_OPERATOR_SOCKET",
        /outside HYPERVISOR_SANDBOX_DATA_DIR/,
      ],
      [{ HYPERVISOR_PROCESS_UNCONTAINED: "yes" }, "HYPERVISOR_PROCESS_UNCONTAINED", /accept/],
      [{ HYPERVISOR_PROCESS_NETWORK: "10.252.0.0/8" }, "HYPERVISOR_PROCESS_NETWORK", /\/16 to \/30/],
      [{ HYPERVISOR_PROCESS_NETWORK: "10.252.0.0/31" }, "HYPERVISOR_PROCESS_NETWORK", /\/16 to \/30/],
      [{ HYPERVISOR_PROCESS_NETWORK: "fd00::/64" }, "HYPERVISOR_PROCESS_NETWORK", /IPv4 CIDR/],
      [{ HYPERVISOR_TRUSTED_PROXIES: "127.0.0.1/33" }, "HYPERVISOR_TRUSTED_PROXIES", /CIDR blocks .*127\.0\.0\.1\/33/],
      [{ HYPERVISOR_TRUSTED_PROXIES: "10.1.2.3/8" }, "HYPERVISOR_TRUSTED_PROXIES", /bits set past its \/8/],
      [{ HYPERVISOR_TRUSTED_PROXIES: "nginx" }, "HYPERVISOR_TRUSTED_PROXIES", /CIDR blocks/],
    ];
    for (const [env, variable, expects] of cases) {
      assert.throws(
        () => loadConfig(env),
        (err: unknown) => err instanceof ConfigError && err.variable === variable && expects.test(err.message),
        JSON.stringify(env),
      );
    }
  });

  it("accepts each bound of the table and refuses the value just past it", () => {
    const bounded = configVariables.filter((v) => "bounds" in v).map((v) => v.name as BoundedVariable);
    assert.ok(bounded.length >= 9, `found ${bounded.length} bounded variables`);
    for (const name of bounded) {
      const { kind, min, max } = boundsOf(name);
      // The smallest step the text can take below the minimum: a byte, a whole number, or a
      // fraction that still rounds below it.
      const below = kind === "decimal" ? min * 0.99 : min - 1;
      const accepted = [min, ...(max === undefined ? [] : [max])];
      const refused = [...(below >= 0 ? [below] : []), ...(max === undefined ? [] : [max + 1])];
      for (const value of accepted) assert.doesNotThrow(() => loadConfig({ [name]: String(value) }), `${name}=${value} is accepted`);
      for (const value of refused) {
        assert.throws(
          () => loadConfig({ [name]: String(value) }),
          (err: unknown) => err instanceof ConfigError && err.variable === name,
          `${name}=${value} is refused`,
        );
      }
    }
  });

  it("reads the operator token from a file or systemd's credentials directory, never from the environment itself", () => {
    const dir = mkdtempSync(join(tmpdir(), "hv-config-"));
    try {
      writeFileSync(join(dir, "operator-token"), "a-token-of-sufficient-length\n");
      assert.equal(loadConfig({ HYPERVISOR_OPERATOR_TOKEN_FILE: join(dir, "operator-token") }).operatorToken, "a-token-of-sufficient-length");
      assert.equal(loadConfig({ CREDENTIALS_DIRECTORY: dir }).operatorToken, "a-token-of-sufficient-length");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("stops the daemon at start with exit code 2 and the variable's name", () => {
    const run = spawnSync(process.execPath, [main], { env: { HYPERVISOR_SANDBOX_CPUS: "many" }, encoding: "utf8", timeout: 10_000 });
    assert.equal(run.status, 2);
    assert.match(run.stderr, /HYPERVISOR_SANDBOX_CPUS: expected a number of CPUs/);
    assert.doesNotMatch(run.stderr, /\n\s+at /, "no stack trace");
  });
});

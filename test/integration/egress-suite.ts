// DESIGN §5b, proven by a hostile sandbox against the real kernel on each runtime (the suite is
// run by egress-process.test.ts and egress-podman.test.ts): a sandbox reaches the egress gateway
// alone (`gateway`), nothing (`none`), or the internet but never the host, link-local or private
// ranges (`open`). "The internet" is a namespace this suite makes (test/helpers/internet.ts), with
// its own link-local "metadata" address; nothing is ever sent to an address it did not create.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { networkInterfaces } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Endpoint } from "../../proxy/target.js";
import { bootDaemon, tempDir, type TestDaemon } from "../helpers/daemon.js";
import { makeInternet, type Internet } from "../helpers/internet.js";
import { repoRoot } from "../helpers/paths.js";
import { testUser } from "../helpers/run-id.js";
import { baseUrl } from "../helpers/sandbox-client.js";

export const egressScript = join(repoRoot, "dist/test/fixtures/egress-sandbox.js");

export interface EgressRuntime {
  /** The daemon's runtime variables. */
  env: () => Record<string, string>;
  /** The operator's POST /generations body for a generation running the egress fixture. */
  generation: () => Record<string, unknown>;
  /** Where another sandbox could reach this one's port directly (its own address). */
  peer: (user: string, slot: string, endpoint: Endpoint) => Promise<{ host: string; port: number }>;
}

function hostAddresses(): string[] {
  return Object.values(networkInterfaces())
    .flat()
    .filter((i) => i && i.family === "IPv4")
    .map((i) => i!.address);
}

/** 169.254.77.77 as one decimal number, the form `inet_aton` reads. */
function decimal(address: string): string {
  return String(address.split(".").reduce((n, octet) => n * 256 + Number(octet), 0));
}

interface Attempt {
  result?: string;
  status?: number;
  body?: string;
  open?: number;
  token?: string | null;
  proxy?: boolean;
}

async function tryFrom(sandbox: Endpoint, attempt: Record<string, unknown>): Promise<Attempt> {
  const res = await fetch(`${baseUrl(sandbox)}/try`, { method: "POST", body: JSON.stringify(attempt), signal: AbortSignal.timeout(60_000) });
  assert.equal(res.status, 200);
  return (await res.json()) as Attempt;
}

/** A daemon in `mode` whose users alice and mallory both run the egress fixture. */
async function bootWith(runtime: EgressRuntime, mode: string, internet: Internet) {
  const state = tempDir();
  const alice = testUser(`eg-${mode}-alice`);
  const mallory = testUser(`eg-${mode}-mallory`);
  const names: Record<string, string[]> = {
    "internet.test": [internet.address],
    "metadata.test": [internet.metadata],
    "rebind.test": [internet.address, internet.metadata],
    "loopback.test": ["127.0.0.1"],
    "private.test": ["192.168.77.1"],
  };
  const t: TestDaemon = await bootDaemon({
    stateDir: state.path,
    env: {
      HYPERVISOR_EGRESS: mode,
      HYPERVISOR_EGRESS_ALLOW: `internet.test,metadata.test,rebind.test,loopback.test,private.test,${internet.cidr}`,
      ...runtime.env(),
    },
    egress: {
      // The gateway's DNS, played here: names this test controls, for addresses it made.
      resolve: async (name) => {
        const found = names[name];
        if (!found) throw Object.assign(new Error(`${name} not found`), { code: "ENOTFOUND" });
        return found;
      },
      limits: { perSandbox: 32 },
    },
  });
  const ids = [alice, mallory];
  for (const user of ids) assert.equal((await t.operator.post("/users", { name: user })).status, 201);
  const added = await t.operator.post<{ generation: { id: number } }>("/generations", {
    ...runtime.generation(),
    ...("command" in runtime.generation() ? { version: `egress-${mode}` } : {}),
  });
  assert.equal(added.status, 201, JSON.stringify(added.body));
  const deployed = await t.operator.post("/deploy", { generation: added.body.generation.id, users: ids });
  assert.equal(deployed.status, 200, JSON.stringify(deployed.body));
  const a = (await t.daemon.services.manager.ensure(alice, "dev")).endpoint;
  const m = (await t.daemon.services.manager.ensure(mallory, "dev")).endpoint;
  const peer = await runtime.peer(alice, t.daemon.services.routing.slotOf(alice, "dev"), a);
  const close = async () => {
    for (const user of ids) for (const role of ["live", "dev"] as const) await t.daemon.services.manager.stop(user, role).catch(() => undefined);
    await t.close().catch(() => undefined);
    state.remove();
  };
  return { t, alice: a, mallory: m, peer, close, stateDir: state.path };
}

export function egressSuite(name: string, runtime: EgressRuntime, skip: string | false): void {
  describe(
    `egress on the ${name} runtime (DESIGN §5b)`,
    { skip: skip || (process.getuid?.() === 0 ? false : "needs root: network namespaces and iptables") },
    () => {
      let internet: Internet;
      before(async () => {
        internet = await makeInternet();
      });
      after(() => internet?.remove());

      describe("gateway mode: a hostile sandbox reaches the gateway and only allowed hosts through it", () => {
        let booted: Awaited<ReturnType<typeof bootWith>>;
        let gateway: string;
        before(async () => {
          booted = await bootWith(runtime, "gateway", internet);
          gateway = booted.t.daemon.services.egress.status.gateway!;
          assert.ok(booted.t.daemon.services.egress.status.enforced, JSON.stringify(booted.t.daemon.services.egress.status));
        });
        after(async () => {
          await booted?.close();
        });

        it("the allowed path: https through HTTPS_PROXY (TLS verified end to end) and plain http through HTTP_PROXY", async () => {
          const secure = await tryFrom(booted.mallory, { kind: "https", url: "https://internet.test/", ca: internet.ca });
          assert.equal(secure.status, 200, secure.body);
          assert.equal(secure.body, "hello from the internet over https");
          const plain = await tryFrom(booted.mallory, { kind: "get", url: `http://internet.test/` });
          assert.equal(plain.status, 200, plain.body);
          assert.match(plain.body!, /hello from the internet over http$/);
        });

        it("direct TCP to the internet and to its metadata address is refused by the kernel", async () => {
          assert.notEqual((await tryFrom(booted.mallory, { kind: "tcp", host: internet.address, port: 80 })).result, "connected");
          assert.notEqual((await tryFrom(booted.mallory, { kind: "tcp", host: internet.metadata, port: 80 })).result, "connected");
          assert.notEqual((await tryFrom(booted.mallory, { kind: "tcp", host: internet.address, port: 443 })).result, "connected");
        });

        it("DNS as a channel: UDP to the internet's port 53 and to the gateway gets no answer", async () => {
          assert.notEqual((await tryFrom(booted.mallory, { kind: "udp", host: internet.address, port: 53 })).result, "answered");
          assert.notEqual((await tryFrom(booted.mallory, { kind: "udp", host: gateway.split(":")[0], port: 53 })).result, "answered");
        });

        it("CONNECT to a host not allowed is refused with a reason the sandbox can read", async () => {
          const answer = await tryFrom(booted.mallory, { kind: "connect", target: "example.com:443" });
          assert.equal(answer.status, 403);
          assert.match(answer.body!, /not in HYPERVISOR_EGRESS_ALLOW/);
        });

        it("the gateway with another sandbox's token, and with none, answers 407", async () => {
          const alices = (await tryFrom(booted.alice, { kind: "token" })).token!;
          assert.ok(alices, "alice has a token");
          assert.equal((await tryFrom(booted.mallory, { kind: "connect", target: "internet.test:443", token: alices })).status, 407);
          assert.equal((await tryFrom(booted.mallory, { kind: "get", url: "http://internet.test/", token: alices })).status, 407);
          assert.equal((await tryFrom(booted.mallory, { kind: "connect", target: "internet.test:443", token: null })).status, 407);
          assert.equal((await tryFrom(booted.mallory, { kind: "get", url: "http://internet.test/", token: "hvegress_forged" })).status, 407);
        });

        it("the link-local address as an IP, a decimal number, an IPv4-mapped IPv6 address and a name resolving to it is refused", async () => {
          for (const target of [
            `${internet.metadata}:80`,
            `${decimal(internet.metadata)}:80`,
            `[::ffff:${internet.metadata}]:80`,
            "metadata.test:80",
            "rebind.test:80",
          ]) {
            const answer = await tryFrom(booted.mallory, { kind: "connect", target });
            assert.ok(answer.status === 403 || answer.status === 400, `${target}: ${answer.status} ${answer.body}`);
          }
          for (const url of [
            `http://${internet.metadata}/`,
            `http://${decimal(internet.metadata)}/`,
            `http://[::ffff:${internet.metadata}]/`,
            "http://metadata.test/",
            "http://metadata.test./",
          ]) {
            const answer = await tryFrom(booted.mallory, { kind: "get", url });
            assert.ok(answer.status === 403 || answer.status === 400, `${url}: ${answer.status} ${answer.body}`);
          }
        });

        it("localhost, the host's own addresses, the hypervisor's ports, another sandbox's port and a private address not allowed are refused through the gateway", async () => {
          const publicPort = booted.t.daemon.publicAddress.port;
          const targets = [
            `localhost:${publicPort}`,
            `127.0.0.1:${publicPort}`,
            `loopback.test:${publicPort}`,
            `0.0.0.0:${publicPort}`,
            ...hostAddresses().map((a) => `${a}:${publicPort}`),
            gateway,
            `${booted.alice.host}:${booted.alice.port}`,
            `${booted.peer.host}:${booted.peer.port}`,
            "private.test:80",
            `${internet.privateHost}:80`,
          ];
          for (const target of targets) {
            const answer = await tryFrom(booted.mallory, { kind: "connect", target });
            assert.ok(answer.status === 403 || answer.status === 400, `${target}: ${answer.status} ${answer.body}`);
          }
          // And directly, past the gateway: the kernel refuses.
          for (const host of hostAddresses())
            assert.notEqual((await tryFrom(booted.mallory, { kind: "tcp", host, port: publicPort })).result, "connected", host);
          assert.notEqual(
            (await tryFrom(booted.mallory, { kind: "tcp", host: booted.peer.host, port: booted.peer.port })).result,
            "connected",
            "another sandbox's port",
          );
        });

        it("a redirect to the link-local address reaches the sandbox as it is; following it through the gateway is refused", async () => {
          const before = (await internet.hits())[internet.metadata] ?? 0;
          const redirect = await tryFrom(booted.mallory, { kind: "get", url: "http://internet.test/redirect" });
          assert.equal(redirect.status, 302);
          const followed = await tryFrom(booted.mallory, { kind: "get", url: `http://${internet.metadata}/latest/meta-data/` });
          assert.equal(followed.status, 403);
          assert.equal((await internet.hits())[internet.metadata] ?? 0, before, "nothing reached the metadata address");
        });

        it("a thousand idle connections to the gateway are bounded, and another sandbox still gets through", async () => {
          const held = await tryFrom(booted.mallory, { kind: "hold", count: 1000 });
          assert.ok(held.open! <= 32, `the gateway let ${held.open} idle connections stay`);
          const other = await tryFrom(booted.alice, { kind: "get", url: "http://internet.test/" });
          assert.equal(other.status, 200);
        });

        it("the token is stored only hashed and appears in no operator API answer", async () => {
          const token = (await tryFrom(booted.alice, { kind: "token" })).token!;
          const db = readFileSync(join(booted.stateDir, "hypervisor.db"));
          assert.equal(db.indexOf(token), -1, "the database file holds the token");
          for (const path of ["/sandboxes", "/users", `/users/${testUser("eg-gateway-alice")}`]) {
            const res = await booted.t.operator.get(path);
            assert.ok(!JSON.stringify(res.body).includes(token), path);
          }
        });

        it("each start makes a fresh token: after a stop and a start the one from before is refused, from the same sandbox, and the new one works", async () => {
          const user = testUser("eg-gateway-alice");
          const before = (await tryFrom(booted.alice, { kind: "token" })).token!;
          assert.equal((await tryFrom(booted.alice, { kind: "get", url: "http://internet.test/" })).status, 200, "the token works before the stop");
          await booted.t.daemon.services.manager.stop(user, "dev");
          booted.alice = (await booted.t.daemon.services.manager.ensure(user, "dev")).endpoint;
          const after = (await tryFrom(booted.alice, { kind: "token" })).token!;
          assert.ok(after, "the sandbox has a token again");
          assert.notEqual(after, before, "a token of its own for this start");
          assert.equal((await tryFrom(booted.alice, { kind: "get", url: "http://internet.test/", token: before })).status, 407, "the old token, as HTTP_PROXY");
          assert.equal(
            (await tryFrom(booted.alice, { kind: "connect", target: "internet.test:443", token: before })).status,
            407,
            "the old token, as HTTPS_PROXY",
          );
          const fresh = await tryFrom(booted.alice, { kind: "get", url: "http://internet.test/" });
          assert.equal(fresh.status, 200, fresh.body);
        });
      });

      describe("none mode: no way out at all", () => {
        let booted: Awaited<ReturnType<typeof bootWith>>;
        before(async () => {
          booted = await bootWith(runtime, "none", internet);
        });
        after(async () => {
          await booted?.close();
        });

        it("no proxy variables, and direct TCP and UDP to the internet are refused", async () => {
          assert.deepEqual(await tryFrom(booted.mallory, { kind: "token" }), { token: null, proxy: false });
          assert.notEqual((await tryFrom(booted.mallory, { kind: "tcp", host: internet.address, port: 80 })).result, "connected");
          assert.notEqual((await tryFrom(booted.mallory, { kind: "udp", host: internet.address, port: 53 })).result, "answered");
        });
      });

      describe("open mode: the internet directly, never the host, link-local, other sandboxes or private ranges not allowed", () => {
        let booted: Awaited<ReturnType<typeof bootWith>>;
        before(async () => {
          booted = await bootWith(runtime, "open", internet);
        });
        after(async () => {
          await booted?.close();
        });

        it("readyz shows open egress as what it is", async () => {
          const res = await fetch(`${booted.t.publicUrl}/_hv/readyz`);
          const body = (await res.json()) as { egress: { mode: string; enforced: boolean } };
          assert.deepEqual({ mode: body.egress.mode, enforced: body.egress.enforced }, { mode: "open", enforced: true });
          assert.ok(booted.t.daemon.notices.some((n) => /Egress is open/.test(n)));
        });

        it("direct TCP to the internet (an allowed private block) works", async () => {
          assert.equal((await tryFrom(booted.mallory, { kind: "tcp", host: internet.address, port: 80 })).result, "connected");
        });

        it("the metadata address, the host's addresses, the hypervisor's port and another sandbox are refused by the kernel", async () => {
          const publicPort = booted.t.daemon.publicAddress.port;
          assert.notEqual((await tryFrom(booted.mallory, { kind: "tcp", host: internet.metadata, port: 80 })).result, "connected");
          for (const host of hostAddresses())
            assert.notEqual((await tryFrom(booted.mallory, { kind: "tcp", host, port: publicPort })).result, "connected", host);
          assert.notEqual(
            (await tryFrom(booted.mallory, { kind: "tcp", host: booted.peer.host, port: booted.peer.port })).result,
            "connected",
            "another sandbox's port",
          );
          assert.equal((await internet.hits())[internet.metadata] ?? 0, 0, "nothing reached the metadata address");
        });

        it("a private address the allow list does not name is refused by the kernel", async () => {
          assert.notEqual((await tryFrom(booted.mallory, { kind: "tcp", host: internet.privateHost, port: 80 })).result, "connected");
          assert.equal((await internet.hits())[internet.privateHost] ?? 0, 0, "nothing reached the private host");
        });
      });
    },
  );
}

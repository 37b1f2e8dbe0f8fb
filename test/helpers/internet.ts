import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { repoRoot } from "./paths.js";
import { runId } from "./run-id.js";

/**
 * "The internet" for egress tests (DESIGN §9): a network namespace named after the run, joined to
 * the host by a veth, with an address of its own (10.251.x.2; the host's end 10.251.x.1) serving
 * plain HTTP, HTTPS with a test CA, a redirect to its own link-local "metadata" address and an
 * upstream that never answers (test/fixtures/internet-server.ts), and a download of N bytes on /bytes/N. The metadata address
 * (169.254.77.y/32) is on its veth, with a host route to it: a stand-in for the cloud's that
 * nothing here ever sends to the real one; and a private host outside the allowed block (10.250.x.2).
 * `remove()` takes all of it away (the route and the
 * host's end go with the namespace).
 */
export interface Internet {
  netns: string;
  /** The namespace's address: HTTP on 80, HTTPS on 443, silence on 81, UDP echo on 53. */
  address: string;
  /** A block holding `address`, for HYPERVISOR_EGRESS_ALLOW. */
  cidr: string;
  /** Its own link-local address, playing the metadata service on port 80. */
  metadata: string;
  /** Another address of its own, in a private block outside `cidr`: a private host no allow list names. */
  privateHost: string;
  /** The test CA's certificate (PEM), which signed the HTTPS server's for `address` and internet.test. */
  ca: string;
  /** Requests each of its addresses received. */
  hits(): Promise<Record<string, number>>;
  remove(): void;
}

function ip(...args: string[]): void {
  execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
}

export async function makeInternet(): Promise<Internet> {
  const n = Number.parseInt(runId.slice(1, 5), 16);
  const x = (n % 250) + 1;
  const netns = `hvinet-${runId}`;
  const veth = `hvi${runId.slice(1)}`;
  const host = `10.251.${x}.1`;
  const address = `10.251.${x}.2`;
  const metadata = `169.254.77.${((n >> 8) % 250) + 1}`;
  const privateHost = `10.250.${x}.2`;
  const dir = mkdtempSync(join(tmpdir(), "hv-internet-"));
  let server: ChildProcess | undefined;
  const remove = () => {
    server?.kill("SIGKILL");
    try {
      ip("netns", "delete", netns);
    } catch {
      // gone already
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const ssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=hypervisor test CA", "-keyout", "ca.key", "-out", "ca.pem");
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=internet.test", "-keyout", "server.key", "-out", "server.csr");
    writeFileSync(join(dir, "ext"), `subjectAltName=DNS:internet.test,IP:${address}\n`);
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", "ext", "-out", "server.pem");
    ip("netns", "add", netns);
    ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns);
    ip("address", "add", `${host}/24`, "dev", veth);
    ip("link", "set", veth, "up");
    ip("-n", netns, "address", "add", `${address}/24`, "dev", "eth0");
    ip("-n", netns, "address", "add", `${metadata}/32`, "dev", "eth0");
    ip("-n", netns, "address", "add", `${privateHost}/32`, "dev", "eth0");
    ip("-n", netns, "link", "set", "eth0", "up");
    ip("-n", netns, "link", "set", "lo", "up");
    // Replies to the sandboxes' block and the gateway go back through the host.
    ip("-n", netns, "route", "add", "default", "via", host);
    ip("route", "add", `${metadata}/32`, "via", address, "dev", veth);
    ip("route", "add", `${privateHost}/32`, "via", address, "dev", veth);
    server = spawn(
      "nsenter",
      [
        `--net=/run/netns/${netns}`,
        "--",
        process.execPath,
        join(repoRoot, "dist/test/fixtures/internet-server.js"),
        join(dir, "server.pem"),
        join(dir, "server.key"),
        metadata,
      ],
      {
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    await new Promise<void>((resolve, reject) => {
      server!.once("exit", (code) => reject(new Error(`the internet's server exited with ${code}`)));
      server!.stdout!.once("data", () => resolve());
    });
    const ca = readFileSync(join(dir, "ca.pem"), "utf8");
    return {
      netns,
      address,
      cidr: `10.251.${x}.0/24`,
      metadata,
      privateHost,
      ca,
      async hits() {
        const res = await fetch(`http://${address}/_hits`, { signal: AbortSignal.timeout(5000) });
        return (await res.json()) as Record<string, number>;
      },
      remove,
    };
  } catch (err) {
    remove();
    throw err;
  }
}

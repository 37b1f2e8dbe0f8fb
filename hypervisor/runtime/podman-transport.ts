import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { Agent, type AgentOptions } from "node:http";
import type { Duplex } from "node:stream";
import type Docker from "dockerode";
import ssh2, { type ConnectConfig } from "ssh2";
import { HypervisorError } from "../errors.js";
import type { PodmanUrl } from "./podman-url.js";

/** Where the ssh transport finds its credentials: files the host provides, never the environment's agent. */
export interface SshCredentials {
  keyFile: string | undefined;
  knownHostsFile: string;
}

/** The dockerode options for a host's URL; ssh gets an agent whose sockets are forwarded unix streams. */
export function dockerOptions(url: PodmanUrl, ssh: SshCredentials): { options: Docker.DockerOptions; close(): void } {
  if (url.transport === "unix") return { options: { socketPath: url.socketPath }, close() {} };
  if (url.transport === "tcp") return { options: { protocol: "http", host: url.host, port: url.port }, close() {} };
  const agent = new SshStreamAgent(url, ssh);
  return { options: { protocol: "http", host: "podman", port: 80, agent } as Docker.DockerOptions, close: () => agent.destroy() };
}

/**
 * Podman's own remote transport: one ssh connection per host, and per HTTP connection one
 * `streamlocal` channel to the remote API socket (what `podman --url ssh://` does), instead of
 * docker-modem's ssh, which runs `docker system dial-stdio` on the remote.
 */
class SshStreamAgent extends Agent {
  private client: Promise<ssh2.Client> | undefined;

  constructor(
    private readonly url: Extract<PodmanUrl, { transport: "ssh" }>,
    private readonly ssh: SshCredentials,
    options: AgentOptions = { keepAlive: true, maxSockets: 16 },
  ) {
    super(options);
  }

  override createConnection(_options: unknown, callback: (err: Error | null, socket?: Duplex) => void): undefined {
    this.connect().then(
      (client) =>
        client.openssh_forwardOutStreamLocal(this.url.socketPath, (err, channel) => {
          if (err) {
            callback(Object.assign(new Error(`ssh ${this.url.host}: ${err.message}`), { code: "ECONNREFUSED" }));
            return;
          }
          // http expects a socket; the channel is a duplex stream, which is all the parser needs.
          const stream = channel as unknown as Duplex & {
            setTimeout?: () => void;
            setNoDelay?: () => void;
            setKeepAlive?: () => void;
            ref?: () => void;
            unref?: () => void;
          };
          stream.setTimeout ??= () => undefined;
          stream.setNoDelay ??= () => undefined;
          stream.setKeepAlive ??= () => undefined;
          stream.ref ??= () => undefined;
          stream.unref ??= () => undefined;
          callback(null, stream);
        }),
      (err: Error) => callback(err),
    );
    return undefined;
  }

  override destroy(): void {
    super.destroy();
    void this.client?.then((c) => c.end()).catch(() => undefined);
    this.client = undefined;
  }

  private connect(): Promise<ssh2.Client> {
    if (this.client) return this.client;
    let config: ConnectConfig;
    try {
      config = this.connectConfig();
    } catch (err) {
      return Promise.reject(err as Error);
    }
    const pending = new Promise<ssh2.Client>((resolve, reject) => {
      const client = new ssh2.Client();
      let ready = false;
      const forget = () => {
        if (this.client === pending) this.client = undefined;
      };
      client.once("ready", () => {
        ready = true;
        resolve(client);
      });
      client.on("error", (err: Error & { code?: string }) => {
        forget();
        if (!ready) reject(Object.assign(new Error(`ssh ${this.url.host}:${this.url.port}: ${err.message}`), { code: err.code ?? "ECONNREFUSED" }));
      });
      client.once("close", forget);
      client.connect(config);
    });
    this.client = pending;
    return pending;
  }

  private connectConfig(): ConnectConfig {
    if (!this.ssh.keyFile) {
      throw new HypervisorError("runtime_unavailable", `host ${this.url.host} is reached over ssh, but HYPERVISOR_SSH_KEY_FILE is not set`);
    }
    const known = knownHostKeys(this.ssh.knownHostsFile, this.url.host, this.url.port);
    if (!known.length) {
      throw new HypervisorError(
        "runtime_unavailable",
        `no key of ${this.url.host}:${this.url.port} in ${this.ssh.knownHostsFile}; add it there (ssh-keyscan, checked by hand) before registering the host`,
      );
    }
    return {
      host: this.url.host,
      port: this.url.port,
      username: this.url.user,
      privateKey: readFileSync(this.ssh.keyFile),
      readyTimeout: 5000,
      keepaliveInterval: 5000,
      keepaliveCountMax: 2,
      // An unknown or changed host key ends the handshake: never trusted on first use.
      hostVerifier: (key: Buffer) => known.some((k) => k.equals(key)),
    };
  }
}

/**
 * The host keys OpenSSH's known_hosts lists for host:port (plain and hashed entries; `[host]:port`
 * for a port other than 22). Revoked (@revoked) and CA (@cert-authority) lines are not trusted here.
 */
export function knownHostKeys(file: string, host: string, port: number): Buffer[] {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return [];
  }
  const name = port === 22 ? host : `[${host}]:${port}`;
  const keys: Buffer[] = [];
  for (const line of text.split("\n")) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 3 || fields[0]!.startsWith("#") || fields[0]!.startsWith("@")) continue;
    const [patterns, type, blob] = fields as [string, string, string];
    if (!patterns.split(",").some((p) => hostMatches(p, name))) continue;
    const parsed = ssh2.utils.parseKey(Buffer.from(`${type} ${blob}`));
    if (parsed instanceof Error) continue;
    const key = Array.isArray(parsed) ? parsed[0] : parsed;
    if (key) keys.push(key.getPublicSSH());
  }
  return keys;
}

function hostMatches(pattern: string, name: string): boolean {
  const hashed = /^\|1\|([^|]+)\|([^|]+)$/.exec(pattern);
  if (hashed) return createHmac("sha1", Buffer.from(hashed[1]!, "base64")).update(name).digest("base64") === hashed[2];
  return pattern === name;
}

import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { isAbsolute, join, relative, resolve, sep } from "node:path";
import { z } from "zod";
import { AddressSet } from "../proxy/addresses.js";
import { EgressAllowList } from "./egress/allow-list.js";

/**
 * Every setting the daemon reads, in one table: the NixOS module, the systemd unit and the
 * docs are checked against it, so a variable cannot exist in one place only.
 */
export const configVariables = [
  {
    name: "HYPERVISOR_LISTEN",
    default: "127.0.0.1:8080",
    description: "public listener (host:port); unset, it follows a plain-http HYPERVISOR_PUBLIC_ORIGIN's port",
  },
  {
    name: "HYPERVISOR_PUBLIC_ORIGIN",
    default: "http://localhost:8080",
    description: "origin users see; WebAuthn, cookies, Origin checks; unset, http://localhost:<HYPERVISOR_LISTEN's port>",
  },
  { name: "HYPERVISOR_RP_ID", default: undefined, description: "WebAuthn relying party ID (default: host of the public origin)" },
  { name: "HYPERVISOR_STATE_DIR", default: "./var", description: "SQLite database, operator socket, process-runtime records" },
  {
    name: "HYPERVISOR_SANDBOX_DATA_DIR",
    default: "./sandboxes",
    description: "process runtime: one data directory per sandbox, outside the state dir",
  },
  { name: "HYPERVISOR_RUNTIME", default: "process", description: "sandbox runtime: process or podman" },
  { name: "HYPERVISOR_PODMAN_SOCKET", default: "/run/podman/podman.sock", description: "Podman Docker-compatible API socket" },
  { name: "HYPERVISOR_SSH_KEY_FILE", default: undefined, description: "private key for Podman hosts reached over ssh://", secret: true },
  {
    name: "HYPERVISOR_SSH_KNOWN_HOSTS_FILE",
    default: undefined,
    description: "known_hosts checked for ssh:// Podman hosts (default <state dir>/known_hosts); unknown keys are refused",
  },
  { name: "HYPERVISOR_SANDBOX_IMAGE", default: "localhost/hypervisor-sandbox:latest", description: "first generation on podman" },
  { name: "HYPERVISOR_SANDBOX_MEMORY", default: "512m", description: "memory limit per sandbox", bounds: { kind: "size", min: 6 * 1024 ** 2 } },
  { name: "HYPERVISOR_SANDBOX_CPUS", default: "1", description: "CPU limit per sandbox", bounds: { kind: "decimal", min: 0.01 } },
  { name: "HYPERVISOR_SANDBOX_PIDS", default: "256", description: "pids limit per sandbox", bounds: { kind: "integer", min: 16, max: 1_000_000 } },
  {
    name: "HYPERVISOR_SANDBOX_DISK",
    default: "2g",
    description:
      "data per sandbox at most (process runtime: a btrfs qgroup limit where the data dir is on btrfs, else measured; Podman volumes on this machine: measured; an over-disk sandbox is stopped)",
    bounds: { kind: "size", min: 16 * 1024 ** 2 },
  },
  {
    name: "HYPERVISOR_SANDBOX_LOG_MAX",
    default: "10m",
    description: "a sandbox's log at most (rotated)",
    bounds: { kind: "size", min: 1024 ** 2 },
  },
  { name: "HYPERVISOR_SANDBOX_ENV", default: "", description: "extra non-secret env for sandboxes, K=V,K2=V2" },
  {
    name: "HYPERVISOR_SANDBOX_DOMAIN",
    default: undefined,
    description: "serve sandboxes from live-<user>.<domain> and dev-<user>.<domain> (default: path mode, /dev/...)",
  },
  { name: "HYPERVISOR_OPERATOR_SOCKET", default: undefined, description: "operator API unix socket (default <state dir>/operator.sock)" },
  { name: "HYPERVISOR_OPERATOR_LISTEN", default: undefined, description: "optional operator TCP listener (host:port)" },
  { name: "HYPERVISOR_OPERATOR_TOKEN_FILE", default: undefined, description: "file holding the bearer token for the TCP operator listener", secret: true },
  { name: "HYPERVISOR_REGISTRATION", default: "open", description: "open, invite or closed" },
  {
    name: "HYPERVISOR_EGRESS_ROUTES_FILE",
    default: undefined,
    description: "JSON array of egress routes with injected credentials (names of secrets, never their values); default $CREDENTIALS_DIRECTORY/egress-routes",
  },
  {
    name: "HYPERVISOR_EGRESS_SECRETS_DIR",
    default: undefined,
    description: "directory of egress-<secret> files for the routes (default: $CREDENTIALS_DIRECTORY only)",
  },
  {
    name: "HYPERVISOR_EGRESS_SECRETS_KEY_FILE",
    default: undefined,
    description: "key that encrypts users' own egress keys (default $CREDENTIALS_DIRECTORY/egress-secrets-key; none: user keys are off)",
    secret: true,
  },
  {
    name: "HYPERVISOR_START_TIMEOUT_MS",
    default: "30000",
    description: "wait for a sandbox to become healthy",
    bounds: { kind: "integer", min: 100, max: 3_600_000 },
  },
  {
    name: "HYPERVISOR_IDLE_STOP_MS",
    default: "1800000",
    description: "stop a sandbox idle this long (0 = never)",
    bounds: { kind: "integer", min: 0, max: Number.MAX_SAFE_INTEGER },
  },
  {
    name: "HYPERVISOR_IDLE_FREEZE_MS",
    default: "300000",
    description: "freeze a sandbox idle this long (memory kept, no CPU; the next request thaws it in milliseconds; 0 = never)",
    bounds: { kind: "integer", min: 0, max: Number.MAX_SAFE_INTEGER },
  },
  {
    name: "HYPERVISOR_MEMORY_RESERVE",
    default: "512m",
    description: "available memory kept free: below it frozen sandboxes are stopped, least recently used first, then new starts are refused (0 = no reserve)",
    bounds: { kind: "size", min: 0 },
  },
  {
    name: "HYPERVISOR_MAX_SANDBOXES",
    default: "200",
    description: "running sandboxes at most; frozen ones do not count (they hold memory, which HYPERVISOR_MEMORY_RESERVE guards, not CPU)",
    bounds: { kind: "integer", min: 1, max: 100_000 },
  },
  {
    name: "HYPERVISOR_DRAIN_MS",
    default: "30000",
    description: "WebSocket grace on the old target after a swap",
    bounds: { kind: "integer", min: 0, max: 3_600_000 },
  },
  {
    name: "HYPERVISOR_USER_MAX_REQUESTS",
    default: "256",
    description: "proxied HTTP requests one user may have in flight at once; more are refused with 429",
    bounds: { kind: "integer", min: 1, max: 100_000 },
  },
  {
    name: "HYPERVISOR_USER_MAX_WEBSOCKETS",
    default: "64",
    description: "WebSockets one user may have open (or opening) through the proxy at once; more are refused with 429",
    bounds: { kind: "integer", min: 1, max: 100_000 },
  },
  {
    name: "HYPERVISOR_ROLLBACK_DEADLINE_MS",
    default: "10000",
    description: "rollback finishes or fails within this",
    bounds: { kind: "integer", min: 100, max: 3_600_000 },
  },
  {
    name: "HYPERVISOR_KNOWN_GOOD_AFTER_MS",
    default: "600000",
    description: "healthy live time before a generation is known-good",
    bounds: { kind: "integer", min: 0, max: Number.MAX_SAFE_INTEGER },
  },
  { name: "HYPERVISOR_LOG_LEVEL", default: "info", description: "pino level" },
  {
    name: "HYPERVISOR_SHUTDOWN_GRACE_MS",
    default: "10000",
    description: "in-flight HTTP grace on SIGTERM",
    bounds: { kind: "integer", min: 0, max: 3_600_000 },
  },
  {
    name: "HYPERVISOR_PROCESS_UNCONTAINED",
    default: undefined,
    description: "accept: run process sandboxes uncontained where this host cannot contain them, even with open registration",
  },
  {
    name: "HYPERVISOR_PROCESS_NETWORK",
    default: "10.252.0.0/16",
    description: "process runtime as root: IPv4 block (/16 to /30) cut into one /31 per running sandbox, its own network namespace's link to the host",
  },
  { name: "HYPERVISOR_TRUSTED_PROXIES", default: "", description: "CIDRs whose X-Forwarded-For is believed (default: none, the socket peer is the client)" },
  {
    name: "HYPERVISOR_SNAPSHOT_KEEP",
    default: "5",
    description: "automatic snapshots of a slot's data kept per user and slot (manual and pinned ones are never pruned)",
    bounds: { kind: "integer", min: 1, max: 1000 },
  },
  {
    name: "HYPERVISOR_PROMOTE_DEADLINE_MS",
    default: "30000",
    description: "a promote is healthy within this or backs out, live's data restored",
    bounds: { kind: "integer", min: 1000, max: 3_600_000 },
  },
  {
    name: "HYPERVISOR_EGRESS",
    default: "gateway",
    description:
      "sandboxes' way out: gateway (only the egress gateway), none (nothing), or open (direct, never to the host, link-local or private ranges not allowed)",
  },
  {
    name: "HYPERVISOR_EGRESS_ALLOW",
    default: "",
    description: "hosts the egress gateway (and open mode) may reach: exact names, *.suffix patterns, and CIDRs of private ranges; link-local never",
  },
  {
    name: "HYPERVISOR_EGRESS_LISTEN",
    default: "10.253.0.1:3128",
    description: "the egress gateway's address:port, put on a link of its own; only sandboxes reach it",
  },
  {
    name: "HYPERVISOR_EGRESS_REMOTE_LISTEN",
    default: undefined,
    description:
      "optional second listener of the egress gateway (address:port) for remote hosts' sandboxes, admitting registered hosts' addresses only; unset, their sandboxes have no way out (none)",
  },
  {
    name: "HYPERVISOR_EGRESS_PROXY_RPM",
    default: "600",
    description:
      "calls (CONNECT tunnels and plain HTTP requests) one user's sandboxes may make through the gateway's forward proxy a minute; more are refused with 429",
    bounds: { kind: "integer", min: 1, max: 1_000_000 },
  },
  {
    name: "HYPERVISOR_EGRESS_PROXY_DAILY_BYTES",
    default: "10g",
    description: "bytes to and from the internet one user's sandboxes may move through the forward proxy a day (UTC); then 429 until the next day",
    bounds: { kind: "size", min: 1024 ** 2 },
  },
  {
    name: "HYPERVISOR_EGRESS_SANDBOX_RATE",
    default: "32m",
    description:
      "bytes a second one sandbox's forward-proxy calls may move, all its connections and both ways together, so that one sandbox's downloads cannot take the gateway from everyone else",
    bounds: { kind: "size", min: 1024 ** 2 },
  },
] as const satisfies readonly { name: string; default: string | undefined; description: string; secret?: boolean; bounds?: Bounds }[];

export type ConfigVariable = (typeof configVariables)[number]["name"];

/**
 * The values a numeric variable accepts, in the unit its text is written in: `integer` a whole
 * number, `size` bytes (the text may carry a k/m/g suffix), `decimal` a fraction such as CPUs.
 * The parser below and the NixOS module's option types both follow these; the deploy tests
 * walk the table to hold the module to them, so a bad value fails evaluation, not the service.
 */
export interface Bounds {
  kind: "integer" | "size" | "decimal";
  min: number;
  /** Absent: no upper bound. */
  max?: number;
}

export type BoundedVariable = Extract<(typeof configVariables)[number], { bounds: unknown }>["name"];

export function boundsOf(name: BoundedVariable): Bounds {
  const variable = configVariables.find((v): v is Extract<(typeof configVariables)[number], { bounds: Bounds }> => v.name === name && "bounds" in v);
  return variable!.bounds;
}

export interface ListenAddress {
  host: string;
  port: number;
}

export interface Config {
  listen: ListenAddress;
  publicOrigin: URL;
  rpId: string;
  stateDir: string;
  /** Process runtime: where each sandbox's data directory lives; never inside the state dir. */
  sandboxDataDir: string;
  runtime: "process" | "podman";
  podmanSocket: string;
  /** ssh:// Podman hosts: the key the hypervisor signs in with, and the host keys it trusts. */
  sshKeyFile: string | undefined;
  sshKnownHostsFile: string;
  sandboxImage: string;
  sandboxLimits: { memoryBytes: number; nanoCpus: number; pids: number; logBytes: number; diskBytes: number };
  sandboxEnv: Record<string, string>;
  /** Sandbox origins (DESIGN §4): each sandbox on its own host under this domain; undefined: path mode. */
  sandboxDomain: string | undefined;
  operatorSocket: string;
  operatorListen: ListenAddress | undefined;
  /** Held in memory only; read from the file the host provides. */
  operatorToken: string | undefined;
  /** Where the token was read from: no sandbox may see it. */
  operatorTokenFile: string | undefined;
  registration: "open" | "invite" | "closed";
  /** The operator accepts process sandboxes without containment (DESIGN §5a). */
  processUncontained: boolean;
  /** Process runtime: the IPv4 block whose /31s link each sandbox's network namespace to the host. */
  processNetwork: string;
  /** Egress routes (DESIGN §5b): where the routes, their secrets and the user-key key are read from, at start and on reload. */
  egressRoutes: { routesFile: string | undefined; secretsDir: string | undefined; secretsKeyFile: string | undefined; credentialsDir: string | undefined };
  /** The forward proxy's per-user budget (HYPERVISOR_EGRESS_PROXY_RPM, HYPERVISOR_EGRESS_PROXY_DAILY_BYTES). */
  egressProxyBudget: { rpm: number; dailyBytes: number };
  /** Bytes a second one sandbox's forward-proxy calls move, both ways together (HYPERVISOR_EGRESS_SANDBOX_RATE). */
  egressSandboxRate: number;
  startTimeoutMs: number;
  idleStopMs: number;
  idleFreezeMs: number;
  /** Bytes of available memory (MemAvailable) the hypervisor keeps free (HYPERVISOR_MEMORY_RESERVE). */
  memoryReserveBytes: number;
  maxSandboxes: number;
  drainMs: number;
  /** Per-user bounds on the proxy (HYPERVISOR_USER_MAX_REQUESTS, HYPERVISOR_USER_MAX_WEBSOCKETS). */
  userMaxRequests: number;
  userMaxWebSockets: number;
  rollbackDeadlineMs: number;
  /** Automatic snapshots kept per user and slot (DESIGN §2a). */
  snapshotKeep: number;
  promoteDeadlineMs: number;
  knownGoodAfterMs: number;
  /** SIGTERM: how long in-flight HTTP requests may take to finish before their connections are cut. */
  shutdownGraceMs: number;
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  /** Peers whose X-Forwarded-For names the client (DESIGN §4); empty: the socket peer is the client. */
  trustedProxies: AddressSet;
  /** DESIGN §5b: how sandboxes get out, and where to. */
  egress: "gateway" | "none" | "open";
  egressAllow: EgressAllowList;
  /** An IPv4 address of no other interface, and a port. */
  egressListen: ListenAddress;
  /** The gateway's listener for remote hosts' sandboxes (HYPERVISOR_EGRESS_REMOTE_LISTEN), if any. */
  egressRemoteListen: ListenAddress | undefined;
}

export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    expected: string,
    got: string | undefined,
  ) {
    super(`${variable}: expected ${expected}, got ${got === undefined ? "nothing" : JSON.stringify(got)}`);
    this.name = "ConfigError";
  }
}

/** One of a few words; zod's own message would repeat the expectation and the value. */
const oneOf = <const T extends [string, ...string[]]>(values: T) => z.enum(values, { errorMap: () => ({ message: `one of ${values.join(", ")}` }) });

const listenAddress = z.string().transform((s, ctx) => {
  const m = /^(?:\[([0-9a-fA-F:]+)\]|([^:\s]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: "host:port, e.g. 127.0.0.1:8080" });
    return z.NEVER;
  }
  return { host: m[1] ?? m[2]!, port };
});

const integer = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.string().regex(/^\d+$/, `a whole number from ${min} to ${max}`).transform(Number).pipe(z.number().int().min(min).max(max));

const SIZE_UNITS: Record<string, number> = { "": 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };
const memorySize = (minBytes: number) =>
  z
    .string()
    .regex(/^\d+(?:\.\d+)?[bkmg]?$/i, `a size such as 512m or 1g (at least ${minBytes / 1024 ** 2}m)`)
    .transform((s) => {
      const unit = s.replace(/^[\d.]+/, "").toLowerCase();
      return Math.round(Number.parseFloat(s) * SIZE_UNITS[unit]!);
    })
    .pipe(z.number().min(minBytes, `at least ${minBytes / 1024 ** 2}m`));

/** Parsed to nano-CPUs, the unit Podman takes. */
const cpus = (min: number) =>
  z
    .string()
    .regex(/^\d+(?:\.\d+)?$/, "a number of CPUs such as 1 or 0.5")
    .transform((s) => Math.round(Number.parseFloat(s) * 1e9))
    .pipe(z.number().min(Math.round(min * 1e9), `at least ${min}`));

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** Names the hypervisor sets itself; an operator variable may not shadow them. */
export const RESERVED_SANDBOX_ENV = [
  "PORT",
  "DATA_DIR",
  "HYPERVISOR_USER",
  "HYPERVISOR_SLOT",
  "HYPERVISOR_GENERATION",
  "HYPERVISOR_ACCOUNT_URL",
  // Egress (DESIGN §5b): the gateway's, set per start.
  "HTTP_PROXY",
  "HTTPS_PROXY",
  "http_proxy",
  "https_proxy",
  "NO_PROXY",
  "no_proxy",
  "HYPERVISOR_EGRESS_URL",
  "HYPERVISOR_EGRESS_TOKEN",
];

const sandboxEnv = z.string().transform((s, ctx) => {
  const env: Record<string, string> = {};
  for (const pair of s
    .split(",")
    .map((p) => p.trim())
    .filter(Boolean)) {
    const eq = pair.indexOf("=");
    const key = eq > 0 ? pair.slice(0, eq) : "";
    if (!ENV_NAME.test(key) || RESERVED_SANDBOX_ENV.includes(key)) {
      ctx.addIssue({
        code: z.ZodIssueCode.custom,
        message: `K=V,K2=V2 with valid names other than ${RESERVED_SANDBOX_ENV.join(", ")} (bad entry ${JSON.stringify(pair)})`,
      });
      return z.NEVER;
    }
    env[key] = pair.slice(eq + 1);
  }
  return env;
});

const DNS_LABEL = "[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?";
const domainName = z
  .string()
  .max(200)
  .regex(new RegExp(`^${DNS_LABEL}(?:\\.${DNS_LABEL})*$`), "a lower-case domain name such as sandboxes.example.org or localhost");

const origin = z.string().transform((s, ctx) => {
  try {
    const url = new URL(s);
    if ((url.protocol === "http:" || url.protocol === "https:") && url.pathname === "/" && !url.search) return url;
  } catch {
    // falls through to the issue below
  }
  ctx.addIssue({ code: z.ZodIssueCode.custom, message: "an origin such as https://sandbox.example.org (no path)" });
  return z.NEVER;
});

const addressBlocks = z.string().transform((s, ctx) => {
  try {
    return AddressSet.parse(s);
  } catch (err) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: `CIDR blocks such as 127.0.0.1/32,::1/128 (${(err as Error).message})` });
    return z.NEVER;
  }
});

const egressAllow = z.string().transform((s, ctx) => {
  try {
    return EgressAllowList.parse(s);
  } catch (err) {
    ctx.addIssue({
      code: z.ZodIssueCode.custom,
      message: `host names, *.suffix patterns and CIDRs such as api.example.org,*.example.net,10.1.0.0/16 (${(err as Error).message})`,
    });
    return z.NEVER;
  }
});

/** The gateway's own address: IPv4, neither loopback, link-local nor unspecified, and a port. */
const egressListen = listenAddress.refine(
  (a) => isIP(a.host) === 4 && !/^(?:127|0|169\.254)\./.test(a.host),
  "an IPv4 address:port of the gateway's own, such as 10.253.0.1:3128 (not loopback, link-local or 0.0.0.0)",
);

/** Where remote hosts' sandboxes are sent: an address they can reach, so never unspecified, loopback or link-local. */
const egressRemoteListen = listenAddress.refine(
  (a) => isIP(a.host) === 4 && !/^(?:127|0|169\.254)\./.test(a.host),
  "an IPv4 address:port remote hosts reach, such as 10.0.0.1:3129 (not loopback, link-local or 0.0.0.0)",
);

/** An IPv4 block of /16 to /30: room for at least two sandboxes, at most 32768 (one /31 each). */
const ipv4Block = z.string().refine(
  (s) => {
    const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(s);
    return m !== null && m.slice(1, 5).every((o) => Number(o) <= 255) && Number(m[5]) >= 16 && Number(m[5]) <= 30;
  },
  { message: "an IPv4 CIDR block from /16 to /30, such as 10.252.0.0/16" },
);

function defaultOf(name: ConfigVariable): string | undefined {
  return configVariables.find((v) => v.name === name)?.default;
}

/** Unset or empty means `fallback`: the table's default unless the caller derives one. */
function parse<T>(env: NodeJS.ProcessEnv, name: ConfigVariable, schema: z.ZodType<T, z.ZodTypeDef, string>, fallback = defaultOf(name)): T {
  const raw = env[name] === undefined || env[name] === "" ? fallback : env[name];
  const result = schema.safeParse(raw ?? "");
  if (!result.success) throw new ConfigError(name, result.error.issues[0]?.message ?? "a valid value", env[name]);
  return result.data;
}

/** Whether `inner` is `outer` or lies below it, by path alone. */
function within(outer: string, inner: string): boolean {
  const rel = relative(outer, inner);
  return rel !== ".." && !rel.startsWith(`..${sep}`) && !isAbsolute(rel);
}

/** A numeric variable, parsed within the bounds of its table row. */
function parseBounded(env: NodeJS.ProcessEnv, name: BoundedVariable): number {
  const { kind, min, max } = boundsOf(name);
  const schema = kind === "integer" ? integer(min, max) : kind === "size" ? memorySize(min) : cpus(min);
  return parse(env, name, schema);
}

/**
 * Reads a secret from the file the host provides: `HYPERVISOR_X_FILE`, or systemd's
 * `$CREDENTIALS_DIRECTORY/<credential>` (LoadCredential=). The value is never written anywhere.
 */
function readSecret(env: NodeJS.ProcessEnv, variable: ConfigVariable, credential: string): { value: string; path: string } | undefined {
  let path = env[variable];
  if (!path && env.CREDENTIALS_DIRECTORY) {
    const candidate = join(env.CREDENTIALS_DIRECTORY, credential);
    try {
      readFileSync(candidate);
      path = candidate;
    } catch {
      path = undefined;
    }
  }
  if (!path) return undefined;
  let value: string;
  try {
    value = readFileSync(path, "utf8").trim();
  } catch (err) {
    throw new ConfigError(variable, "a readable file", `${path} (${(err as NodeJS.ErrnoException).code ?? "unreadable"})`);
  }
  if (value.length < 16) throw new ConfigError(variable, "a file holding a token of at least 16 characters", path);
  return { value, path: resolve(path) };
}

/**
 * Where the egress routes come from. Files, not values: they are read at start and again on
 * every reload (SIGHUP, the operator's call), so a rotated secret needs no restart.
 */
function egressSources(env: NodeJS.ProcessEnv): Config["egressRoutes"] {
  const absolute = (name: ConfigVariable) => parse(env, name, z.string().startsWith("/", "an absolute path").or(z.literal("")), "") || undefined;
  const credentialsDir = env.CREDENTIALS_DIRECTORY || undefined;
  let routesFile = absolute("HYPERVISOR_EGRESS_ROUTES_FILE");
  if (!routesFile && credentialsDir) {
    try {
      readFileSync(join(credentialsDir, "egress-routes"));
      routesFile = join(credentialsDir, "egress-routes");
    } catch {
      routesFile = undefined;
    }
  }
  return {
    routesFile,
    secretsDir: absolute("HYPERVISOR_EGRESS_SECRETS_DIR"),
    secretsKeyFile: absolute("HYPERVISOR_EGRESS_SECRETS_KEY_FILE"),
    credentialsDir,
  };
}

/** Parses the whole configuration once; the only place that reads process.env. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  // When only one of the listener and the origin is set, the other follows from it, so changing
  // the port is one variable: a listener on 18471 is opened as http://localhost:18471, and an
  // origin http://localhost:18471 is served by a listener on 127.0.0.1:18471.
  const listenGiven = Boolean(env.HYPERVISOR_LISTEN);
  const originGiven = Boolean(env.HYPERVISOR_PUBLIC_ORIGIN);
  let listen = parse(env, "HYPERVISOR_LISTEN", listenAddress);
  const originFromListen = listenGiven && !originGiven && listen.port !== 0 ? `http://localhost:${listen.port}` : undefined;
  const publicOrigin = parse(env, "HYPERVISOR_PUBLIC_ORIGIN", origin, originFromListen);
  // Only a plain-http origin can be the listener itself; an https origin needs a TLS front, which
  // forwards to the default listener.
  if (originGiven && !listenGiven && publicOrigin.protocol === "http:") listen = { host: listen.host, port: Number(publicOrigin.port || 80) };
  // WebAuthn's relying party ID is a domain; browsers refuse passkeys on an IP address.
  if (isIP(publicOrigin.hostname.replace(/^\[|\]$/g, ""))) {
    throw new ConfigError(
      "HYPERVISOR_PUBLIC_ORIGIN",
      `a host name, not an IP address: passkeys (WebAuthn) need a domain; on this machine use ${publicOrigin.protocol}//localhost${publicOrigin.port ? `:${publicOrigin.port}` : ""}`,
      env.HYPERVISOR_PUBLIC_ORIGIN,
    );
  }
  const stateDir = resolve(parse(env, "HYPERVISOR_STATE_DIR", z.string().min(1, "a directory path")));
  const operatorSocket = parse(env, "HYPERVISOR_OPERATOR_SOCKET", z.string(), "") || join(stateDir, "operator.sock");
  if (!isAbsolute(operatorSocket)) throw new ConfigError("HYPERVISOR_OPERATOR_SOCKET", "an absolute path", operatorSocket);
  const operatorListenRaw = env.HYPERVISOR_OPERATOR_LISTEN;
  const operatorListen = operatorListenRaw ? parse(env, "HYPERVISOR_OPERATOR_LISTEN", listenAddress) : undefined;
  const tokenSecret = readSecret(env, "HYPERVISOR_OPERATOR_TOKEN_FILE", "operator-token");
  const operatorToken = tokenSecret?.value;
  if (operatorListen && !operatorToken) {
    throw new ConfigError("HYPERVISOR_OPERATOR_TOKEN_FILE", "a token file whenever HYPERVISOR_OPERATOR_LISTEN is set", undefined);
  }
  // A sandbox sees its data directory; nothing of the hypervisor's may lie beside it or above it.
  const sandboxDataDir = resolve(parse(env, "HYPERVISOR_SANDBOX_DATA_DIR", z.string().min(1, "a directory path")));
  if (within(stateDir, sandboxDataDir) || within(sandboxDataDir, stateDir)) {
    throw new ConfigError("HYPERVISOR_SANDBOX_DATA_DIR", `a directory outside the state dir ${stateDir} that does not contain it either`, sandboxDataDir);
  }
  for (const [variable, path] of [
    ["HYPERVISOR_OPERATOR_SOCKET", operatorSocket],
    ["HYPERVISOR_OPERATOR_TOKEN_FILE", tokenSecret?.path],
  ] as const) {
    if (path && within(sandboxDataDir, path)) throw new ConfigError(variable, `a path outside HYPERVISOR_SANDBOX_DATA_DIR (${sandboxDataDir})`, path);
  }
  const rpId = parse(env, "HYPERVISOR_RP_ID", z.string().regex(/^[a-z0-9.-]+$/i, "a host name"), publicOrigin.hostname);
  if (publicOrigin.hostname !== rpId && !publicOrigin.hostname.endsWith(`.${rpId}`)) {
    throw new ConfigError("HYPERVISOR_RP_ID", `the public origin's host or a parent domain of ${publicOrigin.hostname}`, rpId);
  }
  const sandboxDomain = parse(env, "HYPERVISOR_SANDBOX_DOMAIN", domainName.or(z.literal("")), "") || undefined;
  // The public origin must not be one of the sandbox origins it hands out.
  if (sandboxDomain && /^(?:live|dev)-/.test(publicOrigin.hostname) && publicOrigin.hostname.endsWith(`.${sandboxDomain}`)) {
    throw new ConfigError("HYPERVISOR_SANDBOX_DOMAIN", `a domain under which ${publicOrigin.hostname} is no sandbox host`, sandboxDomain);
  }
  return {
    listen,
    publicOrigin,
    rpId,
    stateDir,
    sandboxDataDir,
    runtime: parse(env, "HYPERVISOR_RUNTIME", oneOf(["process", "podman"])),
    podmanSocket: parse(env, "HYPERVISOR_PODMAN_SOCKET", z.string().startsWith("/", "an absolute socket path")),
    sshKeyFile: readSecret(env, "HYPERVISOR_SSH_KEY_FILE", "ssh-key")?.path,
    sshKnownHostsFile: parse(env, "HYPERVISOR_SSH_KNOWN_HOSTS_FILE", z.string().startsWith("/", "an absolute file path"), join(stateDir, "known_hosts")),
    sandboxImage: parse(env, "HYPERVISOR_SANDBOX_IMAGE", z.string().regex(/^[\w./:@-]+$/, "an image reference")),
    sandboxLimits: {
      memoryBytes: parseBounded(env, "HYPERVISOR_SANDBOX_MEMORY"),
      nanoCpus: parseBounded(env, "HYPERVISOR_SANDBOX_CPUS"),
      pids: parseBounded(env, "HYPERVISOR_SANDBOX_PIDS"),
      logBytes: parseBounded(env, "HYPERVISOR_SANDBOX_LOG_MAX"),
      diskBytes: parseBounded(env, "HYPERVISOR_SANDBOX_DISK"),
    },
    sandboxEnv: parse(env, "HYPERVISOR_SANDBOX_ENV", sandboxEnv),
    sandboxDomain,
    operatorSocket,
    operatorListen,
    operatorToken,
    operatorTokenFile: tokenSecret?.path,
    registration: parse(env, "HYPERVISOR_REGISTRATION", oneOf(["open", "invite", "closed"])),
    processUncontained:
      parse(env, "HYPERVISOR_PROCESS_UNCONTAINED", z.enum(["", "accept"], { errorMap: () => ({ message: "accept, or unset" }) }), "") === "accept",
    processNetwork: parse(env, "HYPERVISOR_PROCESS_NETWORK", ipv4Block),
    egressRoutes: egressSources(env),
    egressProxyBudget: { rpm: parseBounded(env, "HYPERVISOR_EGRESS_PROXY_RPM"), dailyBytes: parseBounded(env, "HYPERVISOR_EGRESS_PROXY_DAILY_BYTES") },
    egressSandboxRate: parseBounded(env, "HYPERVISOR_EGRESS_SANDBOX_RATE"),
    startTimeoutMs: parseBounded(env, "HYPERVISOR_START_TIMEOUT_MS"),
    idleStopMs: parseBounded(env, "HYPERVISOR_IDLE_STOP_MS"),
    idleFreezeMs: parseBounded(env, "HYPERVISOR_IDLE_FREEZE_MS"),
    memoryReserveBytes: parseBounded(env, "HYPERVISOR_MEMORY_RESERVE"),
    maxSandboxes: parseBounded(env, "HYPERVISOR_MAX_SANDBOXES"),
    drainMs: parseBounded(env, "HYPERVISOR_DRAIN_MS"),
    userMaxRequests: parseBounded(env, "HYPERVISOR_USER_MAX_REQUESTS"),
    userMaxWebSockets: parseBounded(env, "HYPERVISOR_USER_MAX_WEBSOCKETS"),
    rollbackDeadlineMs: parseBounded(env, "HYPERVISOR_ROLLBACK_DEADLINE_MS"),
    snapshotKeep: parseBounded(env, "HYPERVISOR_SNAPSHOT_KEEP"),
    promoteDeadlineMs: parseBounded(env, "HYPERVISOR_PROMOTE_DEADLINE_MS"),
    knownGoodAfterMs: parseBounded(env, "HYPERVISOR_KNOWN_GOOD_AFTER_MS"),
    shutdownGraceMs: parseBounded(env, "HYPERVISOR_SHUTDOWN_GRACE_MS"),
    logLevel: parse(env, "HYPERVISOR_LOG_LEVEL", oneOf(["fatal", "error", "warn", "info", "debug", "trace", "silent"])),
    trustedProxies: parse(env, "HYPERVISOR_TRUSTED_PROXIES", addressBlocks),
    egress: parse(env, "HYPERVISOR_EGRESS", oneOf(["gateway", "none", "open"])),
    egressAllow: parse(env, "HYPERVISOR_EGRESS_ALLOW", egressAllow),
    egressListen: parse(env, "HYPERVISOR_EGRESS_LISTEN", egressListen),
    egressRemoteListen: env.HYPERVISOR_EGRESS_REMOTE_LISTEN ? parse(env, "HYPERVISOR_EGRESS_REMOTE_LISTEN", egressRemoteListen) : undefined,
  };
}

import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry, type Metric } from "prom-client";
import { ROLES, type Role } from "../../proxy/target.js";

/** Proxy latency: from sub-millisecond forwards of a warm sandbox up to a cold start. */
export const PROXY_LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** Sandbox starts and release steps: route flips take milliseconds, cold starts seconds. */
export const STEP_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60];

export type Outcome = "ok" | "error";
export type ReleaseKind = "deploy" | "swap" | "rollback";
/**
 * Why an authentication was refused; a fixed set, so the label cannot grow without bound.
 * `session`: a request carried an hv_session cookie that is unknown, expired or revoked.
 */
export const AUTH_FAILURE_REASONS = ["login", "registration", "recovery", "passkey", "rate_limited_user", "rate_limited_address", "session"] as const;
export type AuthFailureReason = (typeof AUTH_FAILURE_REASONS)[number];
/** Why the operator API refused a call before acting on it (DESIGN §6). */
export const OPERATOR_REFUSAL_REASONS = ["unauthorized", "invalid_input", "payload_too_large"] as const;
export type OperatorRefusalReason = (typeof OPERATOR_REFUSAL_REASONS)[number];
const OUTCOMES: readonly Outcome[] = ["ok", "error"];

export interface SandboxCounts {
  /** Running and not frozen. */
  running: number;
  /** Frozen by idleness: their memory held, no CPU (DESIGN §8b). */
  frozen?: number;
  starting: number;
  /** Slots of every user: two per user. */
  slots: number;
}

/**
 * The daemon's Prometheus metrics, on a registry of its own (never prom-client's global one),
 * so two daemons in one process do not collide. Gauges that mirror state are read at scrape
 * time from in-memory counts; counters and histograms are fed where things happen.
 */
/** One Podman host as the per-host gauges show it. */
export interface HostHealth {
  name: string;
  up: boolean;
  users: number;
}

export class Metrics {
  readonly registry = new Registry();
  private readonly proxied = { live: new ProxiedCounts(), dev: new ProxiedCounts() };
  private readonly sandboxStart: Histogram<"outcome">;
  private readonly releaseSteps: Record<ReleaseKind, Histogram<"outcome" | "path">>;
  private readonly authFailures: Counter<"reason">;
  private readonly operatorRefusals: Counter<"reason">;
  private readonly proxyLimited: Counter<"limit">;
  private readonly memoryPressure: Counter<"action">;
  private sandboxSource: () => SandboxCounts = () => ({ running: 0, starting: 0, slots: 0 });
  private websocketSource: () => number = () => 0;
  private hostSource: () => HostHealth[] = () => [];

  constructor(opts: { maxSandboxes?: number; defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
    const proxied = this.proxied;
    new Counter({
      name: "hypervisor_proxy_requests_total",
      help: "Proxied user requests by role and response status (499: the response did not complete)",
      labelNames: ["role", "status"],
      registers,
      collect() {
        for (const role of ROLES) proxied[role].flushStatuses((status, n) => this.inc({ role, status: String(status) }, n));
      },
    });
    this.registry.registerMetric(new ProxyLatency(proxied) as unknown as Metric);

    const sandboxes = () => this.sandboxSource();
    new Gauge({
      name: "hypervisor_sandboxes",
      help: "Sandbox slots by state (stopped: not running, whether its container exists or not)",
      labelNames: ["state"],
      registers,
      collect() {
        const { running, frozen = 0, starting, slots } = sandboxes();
        this.set({ state: "running" }, running);
        this.set({ state: "frozen" }, frozen);
        this.set({ state: "starting" }, starting);
        this.set({ state: "stopped" }, Math.max(0, slots - running - frozen - starting));
      },
    });
    if (opts.maxSandboxes !== undefined) {
      new Gauge({ name: "hypervisor_sandboxes_max", help: "Running sandboxes allowed at most (HYPERVISOR_MAX_SANDBOXES)", registers }).set(opts.maxSandboxes);
    }
    this.sandboxStart = new Histogram({
      name: "hypervisor_sandbox_start_duration_seconds",
      help: "Time from starting a sandbox until it answered its health check (error: it never did)",
      labelNames: ["outcome"],
      buckets: STEP_BUCKETS,
      registers,
    });
    const step = (kind: ReleaseKind, what: string, labelNames: Array<"outcome" | "path">) =>
      new Histogram({
        name: `hypervisor_${kind}_duration_seconds`,
        help: `Duration of one user's ${what}, by outcome`,
        labelNames,
        buckets: STEP_BUCKETS,
        registers,
      });
    this.releaseSteps = {
      deploy: step("deploy", "deploy (dev slot started from the generation and healthy)", ["outcome"]),
      swap: step("swap", "swap (health check and route flip)", ["outcome"]),
      rollback: step("rollback", "rollback; path warm (route flip), cold (start first) or none (failed before a target was chosen)", ["outcome", "path"]),
    };
    const hosts = () => this.hostSource();
    new Gauge({
      name: "hypervisor_host_up",
      help: "1 while a Podman host answers its health check, 0 while it is unreachable",
      labelNames: ["host"],
      registers,
      collect() {
        this.reset();
        for (const h of hosts()) this.set({ host: h.name }, h.up ? 1 : 0);
      },
    });
    new Gauge({
      name: "hypervisor_host_users",
      help: "Users placed on each Podman host",
      labelNames: ["host"],
      registers,
      collect() {
        this.reset();
        for (const h of hosts()) this.set({ host: h.name }, h.users);
      },
    });
    const websockets = () => this.websocketSource();
    new Gauge({
      name: "hypervisor_websockets_open",
      help: "WebSockets currently bridged through the proxy",
      registers,
      collect() {
        this.set(websockets());
      },
    });
    this.authFailures = new Counter({
      name: "hypervisor_auth_failures_total",
      help: `Refused authentications by reason: ${AUTH_FAILURE_REASONS.join(", ")}`,
      labelNames: ["reason"],
      registers,
    });
    this.operatorRefusals = new Counter({
      name: "hypervisor_operator_refused_total",
      help: `Operator API calls refused before acting, by reason: ${OPERATOR_REFUSAL_REASONS.join(", ")}`,
      labelNames: ["reason"],
      registers,
    });
    this.proxyLimited = new Counter({
      name: "hypervisor_proxy_limited_total",
      help: "Requests and WebSockets refused (429) because their user had HYPERVISOR_USER_MAX_REQUESTS or _WEBSOCKETS in flight, by limit",
      labelNames: ["limit"],
      registers,
    });
    this.memoryPressure = new Counter({
      name: "hypervisor_memory_pressure_total",
      help: "Available memory below HYPERVISOR_MEMORY_RESERVE: frozen sandboxes stopped and starts refused, by action",
      labelNames: ["action"],
      registers,
    });
    this.presetSeries();
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The exposition text (Prometheus text format 0.0.4). */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  /** Where the sandbox gauge reads its counts at scrape time; must be cheap (no runtime calls). */
  readSandboxesFrom(source: () => SandboxCounts): void {
    this.sandboxSource = source;
  }

  /** Where the per-host gauges read at scrape time: the fleet's in-memory health. */
  readHostsFrom(source: () => HostHealth[]): void {
    this.hostSource = source;
  }

  /** Where the open-WebSocket gauge reads at scrape time (the proxy, built in daemon.ts). */
  readWebSocketsFrom(source: () => number): void {
    this.websocketSource = source;
  }

  /** One proxied response completed (or was abandoned: status 499). Hot path. */
  readonly observeProxied = (role: Role, status: number, seconds: number): void => {
    this.proxied[role].add(status >= 100 && status <= 599 ? status : 0, seconds);
  };

  sandboxStarted(seconds: number, outcome: Outcome): void {
    this.sandboxStart.observe({ outcome }, seconds);
  }

  /** One user's step of a deploy, swap or rollback finished. */
  releaseStep(kind: ReleaseKind, seconds: number, outcome: Outcome, path?: "warm" | "cold"): void {
    if (kind === "rollback") this.releaseSteps.rollback.observe({ outcome, path: path ?? "none" }, seconds);
    else this.releaseSteps[kind].observe({ outcome }, seconds);
  }

  authFailure(reason: AuthFailureReason): void {
    this.authFailures.inc({ reason });
  }

  operatorRefused(reason: OperatorRefusalReason): void {
    this.operatorRefusals.inc({ reason });
  }

  /** Memory fell below HYPERVISOR_MEMORY_RESERVE: a frozen sandbox was stopped, or a start refused. */
  memoryPressed(action: "stopped" | "refused"): void {
    this.memoryPressure.inc({ action });
  }

  limited(limit: "requests" | "websockets"): void {
    this.proxyLimited.inc({ limit });
  }

  /** Zero-valued series for every fixed label value, so rate() and alerts see them from the start. */
  private presetSeries(): void {
    for (const outcome of OUTCOMES) {
      this.sandboxStart.zero({ outcome });
      this.releaseSteps.deploy.zero({ outcome });
      this.releaseSteps.swap.zero({ outcome });
      // A rollback that succeeded always took a path; only a failure can have none.
      for (const path of outcome === "ok" ? ["warm", "cold"] : ["warm", "cold", "none"]) this.releaseSteps.rollback.zero({ outcome, path });
    }
    for (const reason of AUTH_FAILURE_REASONS) this.authFailures.inc({ reason }, 0);
    for (const reason of OPERATOR_REFUSAL_REASONS) this.operatorRefusals.inc({ reason }, 0);
    for (const limit of ["requests", "websockets"]) this.proxyLimited.inc({ limit }, 0);
    for (const action of ["stopped", "refused"]) this.memoryPressure.inc({ action }, 0);
  }
}

/**
 * One role's proxied requests, counted in plain arrays: the proxy calls add() once per request,
 * and prom-client's own observe() and inc() validate and hash their labels on every call, which
 * cost more than the rest of the proxy's own work per request. Turned into series when scraped.
 */
class ProxiedCounts {
  /** Responses by status code (0: none in 100-599) since the last scrape. */
  private readonly statuses = new Float64Array(600);
  /** Per PROXY_LATENCY_BUCKETS bound, not cumulative; the last slot is +Inf. */
  readonly buckets = new Float64Array(PROXY_LATENCY_BUCKETS.length + 1);
  sum = 0;
  count = 0;

  add(status: number, seconds: number): void {
    this.statuses[status]!++;
    let i = 0;
    while (i < PROXY_LATENCY_BUCKETS.length && seconds > PROXY_LATENCY_BUCKETS[i]!) i++;
    this.buckets[i]!++;
    this.sum += seconds;
    this.count++;
  }

  reset(): void {
    this.buckets.fill(0);
    this.sum = 0;
    this.count = 0;
  }

  /** Hands over the counts by status since the last call, and forgets them. */
  flushStatuses(into: (status: number, n: number) => void): void {
    for (let status = 0; status < this.statuses.length; status++) {
      const n = this.statuses[status]!;
      if (n === 0) continue;
      this.statuses[status] = 0;
      into(status, n);
    }
  }
}

/** hypervisor_proxy_request_duration_seconds, read from ProxiedCounts in the exposition prom-client's Histogram gives. */
class ProxyLatency {
  readonly name = "hypervisor_proxy_request_duration_seconds";
  readonly help = "Time from a proxied request's arrival until its response completed, starts on demand included";
  readonly type = "histogram";
  readonly aggregator = "sum";

  constructor(private readonly counts: Record<Role, ProxiedCounts>) {}

  get(): {
    name: string;
    help: string;
    type: string;
    aggregator: string;
    values: { metricName: string; labels: Record<string, string | number>; value: number }[];
  } {
    const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
    for (const role of ROLES) {
      const { buckets, sum, count } = this.counts[role];
      let cumulative = 0;
      for (let i = 0; i < buckets.length; i++) {
        cumulative += buckets[i]!;
        values.push({ metricName: `${this.name}_bucket`, labels: { role, le: PROXY_LATENCY_BUCKETS[i] ?? "+Inf" }, value: cumulative });
      }
      values.push({ metricName: `${this.name}_sum`, labels: { role }, value: sum });
      values.push({ metricName: `${this.name}_count`, labels: { role }, value: count });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void {
    for (const role of ROLES) this.counts[role].reset();
  }
}

import type { Logger } from "pino";
import type { Registry } from "prom-client";
import type { AuditLog } from "../audit/audit-log.js";
import { ConfigError, type Config } from "../config.js";
import type { Db } from "../db/database.js";
import { Budgets } from "./budgets.js";
import type { Caller } from "./tokens.js";
import { EgressAudit } from "./egress-audit.js";
import { DEFAULT_LIMITS, type ForwardAccounting } from "./gateway.js";
import { createRouteHandler, type RouteHandler } from "./route-handler.js";
import { EgressRoutes, type ReloadResult } from "./secrets.js";
import { readSecretsKey, UserKeys } from "./user-keys.js";

/** The egress routes' side of the gateway (DESIGN §5b), built once by buildServices. */
export interface EgressCredentials {
  routes: EgressRoutes;
  /** Shared with the forward proxy, which counts under the target `proxy`. */
  budgets: Budgets;
  audit: EgressAudit;
  userKeys: UserKeys;
  /** What the gateway calls for `$HYPERVISOR_EGRESS_URL/<route>/...` once it knows the caller. */
  handleRoute: RouteHandler;
  /** The forward proxy's budget (target `proxy`) and audit rows (`host:<name>`). */
  forwardAccounting: ForwardAccounting;
  /** Reads the routes file and the secrets again; a failure keeps the old set and says why (and logs it). */
  reload(): ReloadResult;
}

/** Bad egress files stop the start as bad configuration does, in the loader's own words (they name the route and field, or the file). */
class EgressConfigError extends ConfigError {
  constructor(variable: string, problem: string) {
    super(variable, "", undefined);
    this.message = `${variable}: ${problem}`;
  }
}

export function buildEgressCredentials(
  config: Pick<Config, "egressRoutes" | "egressProxyBudget">,
  deps: { db: Db; audit: AuditLog; registry: Registry; log: Logger },
): EgressCredentials {
  const log = deps.log.child({ component: "egress" });
  const routes = new EgressRoutes(config.egressRoutes);
  const budgets = new Budgets();
  const audit = new EgressAudit(deps.audit, deps.db, deps.registry);
  let secretsKey: Buffer | undefined;
  try {
    secretsKey = readSecretsKey(config.egressRoutes.secretsKeyFile, config.egressRoutes.credentialsDir);
  } catch (err) {
    throw new EgressConfigError("HYPERVISOR_EGRESS_SECRETS_KEY_FILE", (err as Error).message);
  }
  const userKeys = new UserKeys(deps.db, secretsKey);
  const reload = (): ReloadResult => {
    const result = routes.reload();
    if (result.ok) {
      log.info({ routes: result.routes, missingSecrets: result.missingSecrets }, "egress routes loaded");
      for (const name of result.missingSecrets)
        log.warn({ secret: name }, `egress secret ${name} not found (egress-${name}): its routes answer 503 until it is there`);
    } else {
      log.error({ error: result.error }, "egress routes not reloaded; the previous ones stay");
    }
    return result;
  };
  const first = reload();
  // At start there is no previous set to keep: a broken routes file stops the daemon, as bad config does.
  if (!first.ok) throw new EgressConfigError("HYPERVISOR_EGRESS_ROUTES_FILE", first.error);
  if (!userKeys.enabled) log.info("users' own egress keys are off: no egress-secrets-key credential");
  return {
    routes,
    budgets,
    audit,
    userKeys,
    handleRoute: createRouteHandler({ routes, budgets, audit, log, userKeys }),
    forwardAccounting: forwardAccounting(budgets, audit, config.egressProxyBudget),
    reload,
  };
}

/**
 * One budget per user for everything through the forward proxy, whatever the host: what a user
 * may spend on the open internet, beside each route's own. At once: the gateway's connections
 * for both of the user's sandboxes.
 */
function forwardAccounting(budgets: Budgets, audit: EgressAudit, limits: Config["egressProxyBudget"]): ForwardAccounting {
  const budget = { rpm: limits.rpm, dailyBytes: limits.dailyBytes, concurrent: 2 * DEFAULT_LIMITS.perSandbox };
  const row = (caller: Caller, method: string, host: string) => ({ caller, target: `host:${host}`, method, path: "" });
  return {
    begin(caller, method, host) {
      const started = Date.now();
      const admitted = budgets.acquire(caller.user, "proxy", budget);
      if (!admitted.ok) {
        audit.record({
          ...row(caller, method, host),
          status: 429,
          bytesIn: 0,
          bytesOut: 0,
          durationMs: 0,
          decision: "refused",
          reason: `budget: ${admitted.limit}`,
        });
        return { ok: false, message: admitted.message, retryAfterSeconds: admitted.retryAfterSeconds };
      }
      const { lease } = admitted;
      return {
        ok: true,
        call: {
          flow(bytes) {
            const spent = lease.addBytes(bytes);
            return spent && { message: spent.message, retryAfterSeconds: spent.retryAfterSeconds, reason: `budget: ${spent.limit}` };
          },
          end({ status, bytesIn, bytesOut, reason, refused }) {
            lease.addBytes(Math.max(0, bytesIn + bytesOut - lease.bytes));
            lease.release();
            audit.record({
              ...row(caller, method, host),
              status,
              bytesIn,
              bytesOut,
              durationMs: Date.now() - started,
              decision: refused ? "refused" : "allowed",
              reason,
            });
          },
        },
      };
    },
    refused(caller, method, host, status, reason) {
      audit.record({ ...row(caller, method, host), status, bytesIn: 0, bytesOut: 0, durationMs: 0, decision: "refused", reason });
    },
  };
}

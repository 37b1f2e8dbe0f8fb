import type { Logger } from "pino";
import type { Registry } from "prom-client";
import type { AuditLog } from "../audit/audit-log.js";
import { ConfigError, type Config } from "../config.js";
import type { Db } from "../db/database.js";
import { Budgets } from "./budgets.js";
import { EgressAudit } from "./egress-audit.js";
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
  config: Pick<Config, "egressRoutes">,
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
  return { routes, budgets, audit, userKeys, handleRoute: createRouteHandler({ routes, budgets, audit, log, userKeys }), reload };
}

import { OpenAPIHono } from "@hono/zod-openapi";
import { timingSafeEqual } from "node:crypto";
import { requestId } from "hono/request-id";
import { HypervisorError } from "../errors.js";
import { limitBody } from "../http/body-limit.js";
import { callerError, installErrorHandling, requestLogger } from "../http/error-handling.js";
import { validationFailed } from "../http/validation.js";
import type { OperatorRefusalReason } from "../metrics/metrics.js";
import type { Services } from "../services.js";
import { registerAuditRoutes } from "./audit-routes.js";
import { registerBackupRoutes } from "./backup-routes.js";
import { registerEgressRoutes } from "./egress-routes.js";
import { registerGenerationRoutes } from "./generation-routes.js";
import { registerHostRoutes } from "./host-routes.js";
import { registerInviteRoutes } from "./invite-routes.js";
import { registerMetricsRoutes } from "./metrics-routes.js";
import type { OperatorApp, OperatorEnv } from "./operator-env.js";
import { registerReleaseRoutes } from "./release-routes.js";
import { answerWrongMethods, requireJsonBodies } from "./request-shape.js";
import { registerSandboxRoutes } from "./sandbox-routes.js";
import { registerSnapshotRoutes } from "./snapshot-routes.js";
import { MAX_BODY_BYTES } from "./schemas.js";
import { registerStatusRoutes } from "./status-routes.js";
import { registerUserRoutes } from "./user-routes.js";

/**
 * The operator API. `transport` says which listener serves it: the unix socket is guarded by
 * its file mode (0600), the TCP listener by the bearer token.
 */
export function createOperatorApp(services: Services, transport: "unix" | "tcp"): OperatorApp {
  const { config, log, db, runtime, users, routing, generations, manager, releases, audit, refusals, invites, metrics, startedAt, readiness, sessions } =
    services;
  const app: OperatorApp = new OpenAPIHono<OperatorEnv>({
    defaultHook: (result) => {
      if (!result.success) throw validationFailed(result.error);
    },
  });
  installErrorHandling(app, log);
  app.use(requestId(), requestLogger(log));
  app.use(async function auditRefusal(c, next) {
    await next();
    const reason = c.error && !c.get("audited") ? refusalReason(c.res.status) : undefined;
    if (!reason) return;
    metrics.operatorRefused(reason);
    // Never the request's headers or body: the token given, right or wrong, is a secret.
    refusals.record({
      actor: c.get("actor") ?? "anonymous",
      action: "operator.refused",
      target: `${c.req.method} ${c.req.path}`.slice(0, 256),
      source: c.get("source") ?? "unknown",
      outcome: "refused",
      // `code` is the error code the caller was answered with (what hypervisorctl printed); `reason`
      // is the metric's coarser label (hypervisor_operator_refused_total).
      details: { reason, code: callerError(c.error).code, status: c.res.status, requestId: c.get("requestId") },
    });
  });
  app.use(async function identifyOperator(c, next) {
    const address = (c.env as { incoming?: { socket?: { remoteAddress?: string } } } | undefined)?.incoming?.socket?.remoteAddress;
    c.set("source", transport === "unix" ? "unix-socket" : (address ?? "tcp"));
    if (transport === "tcp") {
      const expected = config.operatorToken;
      const given = /^Bearer (.+)$/i.exec(c.req.header("authorization") ?? "")?.[1];
      if (!expected || !given || !constantTimeEqual(given, expected)) {
        throw new HypervisorError("unauthorized", "operator API over TCP needs Authorization: Bearer <token>");
      }
    }
    c.set("actor", transport === "unix" ? "operator:unix" : "operator:token");
    await next();
  });
  app.use(limitBody(MAX_BODY_BYTES));
  app.use(requireJsonBodies());
  registerStatusRoutes(app, { readiness, runtime, users, manager, sandboxStatus: services.sandboxStatus, startedAt, config });
  registerUserRoutes(app, { users, routing, audit, sessions, userRemoval: services.userRemoval });
  registerSandboxRoutes(app, { manager, sandboxStatus: services.sandboxStatus, users, audit });
  registerGenerationRoutes(app, { generations, users, runtime, takes: services.takes, audit });
  registerReleaseRoutes(app, { releases, dataReleases: services.dataReleases, users, audit, manager });
  registerHostRoutes(app, { fleet: services.fleet, userMoves: services.userMoves, audit });
  registerAuditRoutes(app, { audit });
  registerInviteRoutes(app, { invites, audit, config });
  registerMetricsRoutes(app, { metrics });
  registerBackupRoutes(app, { db, audit, config });
  registerEgressRoutes(app, { egress: services.egressCredentials, audit });
  registerSnapshotRoutes(app, { snapshots: services.snapshots, dataReleases: services.dataReleases, audit });
  app.doc("/openapi.json", {
    openapi: "3.0.3",
    info: {
      title: "hypervisor operator API",
      version: "1",
      description:
        "Conventions on every route: a request body is JSON sent as `Content-Type: application/json` (another type answers 415 unsupported_media_type); " +
        "a known path asked with a method it does not take answers 405 method_not_allowed with `Allow`; a step that deletes data or leaves users " +
        "without a way back answers 409 confirmation_required, saying what would follow, unless the query says `confirm=true`. " +
        "Errors are `{ error: { code, message, requestId } }`.",
    },
  });
  answerWrongMethods(app, log);
  return app;
}

/** A call refused before any route acted on it, by the status its error got. */
function refusalReason(status: number): OperatorRefusalReason | undefined {
  if (status === 401) return "unauthorized";
  if (status === 400 || status === 415) return "invalid_input";
  if (status === 413) return "payload_too_large";
  return undefined;
}

function constantTimeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

import type { Context, Hono, MiddlewareHandler } from "hono";
import { z } from "zod";
import { rateLimitKey } from "../../proxy/addresses.js";
import type { AuditLog, AuditRecord } from "../audit/audit-log.js";
import type { Config } from "../config.js";
import { asHypervisorError, HypervisorError } from "../errors.js";
import { limitBody } from "../http/body-limit.js";
import type { AppEnv } from "../http/error-handling.js";
import { UserName } from "../http/user-name.js";
import type { AuthFailureReason, Metrics } from "../metrics/metrics.js";
import { CeremonyError, requireScope, type AuthService, type SignedIn } from "./auth-service.js";
import { STEP_UP_ACTIONS } from "./challenge-store.js";
import type { Passkey } from "./passkey-store.js";
import { clientAddress, readJson, requireSameOrigin } from "./request-context.js";
import { clearedSessionCookie, sessionCookie, type NewSession, type SessionStore } from "./session-store.js";

/** Passkey responses are a few hundred bytes (none attestation); this leaves room for packed. */
export const MAX_AUTH_BODY_BYTES = 32 * 1024;

/** base64url without padding (WebAuthn L3 §5.1 JSON encodings). */
const b64url = (max: number) =>
  z
    .string()
    .min(1)
    .max(max)
    .regex(/^[A-Za-z0-9_-]+$/, "base64url");
/** A credential ID is at most 1023 bytes (§5.8.3). */
const CredentialId = b64url(1364);

/** The PublicKeyCredential JSON envelope both ceremonies share; only `response` differs. */
const credential = <R extends z.ZodTypeAny>(response: R) =>
  z
    .object({
      id: CredentialId,
      rawId: CredentialId,
      type: z.literal("public-key"),
      response,
      authenticatorAttachment: z.enum(["platform", "cross-platform"]).optional(),
      clientExtensionResults: z.record(z.unknown()).default({}),
    })
    .refine((c) => c.id === c.rawId, { message: "id and rawId differ", path: ["rawId"] });

const RegistrationCredential = credential(
  z.object({
    clientDataJSON: b64url(4096),
    attestationObject: b64url(MAX_AUTH_BODY_BYTES),
    transports: z.array(z.string().max(32)).max(10).optional(),
    authenticatorData: b64url(MAX_AUTH_BODY_BYTES).optional(),
    publicKey: b64url(4096).optional(),
    publicKeyAlgorithm: z.number().int().optional(),
  }),
);

const AuthenticationCredential = credential(
  z.object({
    clientDataJSON: b64url(4096),
    authenticatorData: b64url(4096),
    signature: b64url(1024),
    userHandle: b64url(128).optional(),
  }),
);

const Empty = z.object({}).strict();
const RegisterOptionsBody = z.object({ username: UserName, invite: z.string().min(1).max(128).optional() }).strict();
const RegisterVerifyBody = z.object({ credential: RegistrationCredential }).strict();
const LoginOptionsBody = z.object({ username: UserName.optional() }).strict();
const LoginVerifyBody = z.object({ credential: AuthenticationCredential }).strict();
const RecoveryBody = z.object({ username: UserName, code: z.string().min(1).max(64) }).strict();
/** A fresh assertion for the change it travels with (DESIGN §5 step-up): POST /auth/step-up/options first. */
export const StepUp = AuthenticationCredential.optional();
const AddPasskeyBody = z.object({ credential: RegistrationCredential, name: z.string().trim().min(1).max(64).optional(), stepUp: StepUp }).strict();
const StepUpOptionsBody = z.object({ action: z.enum(STEP_UP_ACTIONS) }).strict();
const StepUpBody = z.object({ stepUp: StepUp }).strict();
const PasskeyName = z.string().trim().min(1, "give the passkey a name").max(64, "a passkey name is at most 64 characters");
const RenamePasskeyBody = z.object({ name: PasskeyName }).strict();

/** The metrics label for a refused auth action (hypervisor_auth_failures_total). */
function failureReasonOf(action: string): AuthFailureReason {
  if (action === "auth.login") return "login";
  if (action === "auth.register") return "registration";
  if (action === "auth.recovery") return "recovery";
  return "passkey";
}

export interface PasskeyView {
  id: string;
  name: string;
  createdAt: string;
  lastUsedAt: string | null;
  backedUp: boolean;
}

export function passkeyView(p: Passkey): PasskeyView {
  return {
    id: p.id,
    name: p.name,
    createdAt: new Date(p.createdAt).toISOString(),
    lastUsedAt: p.lastUsedAt === null ? null : new Date(p.lastUsedAt).toISOString(),
    backedUp: p.backedUp,
  };
}

export interface AuthRouteDeps {
  auth: AuthService;
  sessions: SessionStore;
  audit: AuditLog;
  metrics: Metrics;
  config: Pick<Config, "publicOrigin" | "trustedProxies">;
}

/**
 * `/auth/*`: JSON in, JSON out. Every request is Origin-checked (non-GET), size-limited and
 * rate-limited per client address; sign-in failures are also limited per user name (in
 * AuthService). Each outcome is audited, without tokens, codes or challenges.
 */
export function registerAuthRoutes(app: Hono<AppEnv>, deps: AuthRouteDeps): void {
  const { auth, sessions, audit, metrics, config } = deps;
  const secure = config.publicOrigin.protocol === "https:";

  const setSession = (c: Context<AppEnv>, s: NewSession) => {
    c.header("Set-Cookie", sessionCookie(s.token, { secure, maxAgeSeconds: (s.expiresAt - Date.now()) / 1000 }), { append: true });
  };
  const currentSession = (c: Context<AppEnv>) => sessions.authenticate(c.req.header("cookie"));
  /** A new sign-in replaces whatever session the browser had. */
  const replaceSession = (c: Context<AppEnv>, s: NewSession) => {
    const previous = currentSession(c);
    if (previous && previous.sessionId !== s.session.sessionId) sessions.revoke(previous.sessionId);
    setSession(c, s);
  };
  const addressOf = (c: Context<AppEnv>) => clientAddress(c, config.trustedProxies);
  /** The key a client's rate limits and outstanding challenges count under. */
  const clientKey = (c: Context<AppEnv>) => rateLimitKey(addressOf(c));
  const record = (c: Context<AppEnv>, entry: Omit<AuditRecord, "source">) =>
    audit.record({ ...entry, source: addressOf(c), details: { ...entry.details, requestId: c.get("requestId") } });
  /** Registration and sign-in end alike: the new session replaces the browser's, and the passkey used is audited. */
  const signedIn = (c: Context<AppEnv>, action: "auth.register" | "auth.login", done: SignedIn) => {
    replaceSession(c, done.session);
    record(c, { actor: `user:${done.user}`, action, target: done.user, outcome: "ok", details: { passkey: done.passkey.id } });
  };
  /** Audits a refusal of `action`, then lets the error answer the request. */
  const refused = (c: Context<AppEnv>, action: string, err: unknown, actor = "anonymous", target?: string): never => {
    const e = asHypervisorError(err);
    if (e.status < 500) metrics.authFailure(e.code === "rate_limited" ? "rate_limited_user" : failureReasonOf(action));
    const user = err instanceof CeremonyError ? err.user : target;
    record(c, {
      actor,
      action,
      ...(user ? { target: user } : {}),
      outcome: e.status >= 500 ? "error" : "refused",
      details: { code: e.code, ...(err instanceof CeremonyError ? { reason: err.reason } : {}) },
    });
    throw err;
  };

  app.use("/auth/*", async function noStore(c, next) {
    await next();
    c.header("Cache-Control", "no-store");
    c.header("X-Content-Type-Options", "nosniff");
  });
  app.use("/auth/*", requireSameOrigin(config.publicOrigin));
  app.use("/auth/*", limitBody(MAX_AUTH_BODY_BYTES));
  const limited: MiddlewareHandler<AppEnv> = async function limitPerAddress(c, next) {
    const decision = auth.addresses.take(clientKey(c));
    if (!decision.ok) {
      metrics.authFailure("rate_limited_address");
      throw new HypervisorError("rate_limited", "too many authentication requests from this address; wait and try again", {
        retryAfterSeconds: decision.retryAfterSeconds,
      });
    }
    await next();
  };

  // --- registration -----------------------------------------------------------------------------

  app.post("/auth/register/options", limited, async (c) => {
    const body = await readJson(c, RegisterOptionsBody);
    try {
      return c.json({ options: await auth.registrationOptions(body.username, body.invite, clientKey(c)) }, 200);
    } catch (err) {
      return refused(c, "auth.register", err, "anonymous", body.username);
    }
  });

  app.post("/auth/register/verify", limited, async (c) => {
    const { credential } = await readJson(c, RegisterVerifyBody);
    try {
      const done = await auth.register(credential, { userAgent: c.req.header("user-agent") });
      signedIn(c, "auth.register", done);
      return c.json({ user: done.user, recoveryCodes: done.recoveryCodes }, 201);
    } catch (err) {
      return refused(c, "auth.register", err);
    }
  });

  // --- sign-in ----------------------------------------------------------------------------------

  app.post("/auth/login/options", limited, async (c) => {
    const { username } = await readJson(c, LoginOptionsBody);
    return c.json({ options: await auth.loginOptions(username, clientKey(c)) }, 200);
  });

  app.post("/auth/login/verify", limited, async (c) => {
    const { credential } = await readJson(c, LoginVerifyBody);
    try {
      const done = await auth.login(credential);
      signedIn(c, "auth.login", done);
      return c.json({ user: done.user }, 200);
    } catch (err) {
      return refused(c, "auth.login", err);
    }
  });

  app.post("/auth/recovery", limited, async (c) => {
    const { username, code } = await readJson(c, RecoveryBody);
    try {
      const session = await auth.recover(username, code, clientKey(c));
      replaceSession(c, session);
      record(c, {
        actor: `user:${username}`,
        action: "auth.recovery",
        target: username,
        outcome: "ok",
        details: { remainingCodes: auth.recoveryCodes.remaining(username) },
      });
      return c.json({ user: username, scope: "recovery" as const }, 200);
    } catch (err) {
      return refused(c, "auth.recovery", err);
    }
  });

  app.post("/auth/logout", async (c) => {
    const session = currentSession(c);
    c.header("Set-Cookie", clearedSessionCookie({ secure }), { append: true });
    if (!session) return c.json({ signedOut: false }, 200);
    sessions.revoke(session.sessionId);
    record(c, { actor: `user:${session.user}`, action: "auth.logout", target: session.user, outcome: "ok", details: { session: session.sessionId } });
    return c.json({ signedOut: true }, 200);
  });

  app.get("/auth/session", (c) => {
    const session = currentSession(c);
    if (!session) throw new HypervisorError("unauthorized", "not signed in");
    return c.json({ user: session.user, scope: session.scope }, 200);
  });

  // --- the signed-in user's passkeys and recovery codes ----------------------------------------

  app.get("/auth/passkeys", (c) => {
    const session = currentSession(c);
    requireScope(session, "full");
    return c.json({ passkeys: auth.passkeys.list(session.user).map(passkeyView), recoveryCodesLeft: auth.recoveryCodes.remaining(session.user) }, 200);
  });

  app.post("/auth/step-up/options", limited, async (c) => {
    const session = currentSession(c);
    requireScope(session, "full");
    const { action } = await readJson(c, StepUpOptionsBody);
    return c.json({ options: await auth.stepUpOptions(session, action, clientKey(c)) }, 200);
  });

  app.post("/auth/passkeys/options", limited, async (c) => {
    // The one thing a recovery session may do.
    const session = currentSession(c);
    if (!session) throw new HypervisorError("unauthorized", "sign in first");
    await readJson(c, Empty);
    return c.json({ options: await auth.addPasskeyOptions(session, clientKey(c)) }, 200);
  });

  app.post("/auth/passkeys/verify", limited, async (c) => {
    const session = currentSession(c);
    if (!session) throw new HypervisorError("unauthorized", "sign in first");
    const { credential, name, stepUp } = await readJson(c, AddPasskeyBody);
    const actor = `user:${session.user}`;
    try {
      const { passkey, upgraded } = await auth.addPasskey(session, credential, { name, stepUp, userAgent: c.req.header("user-agent") });
      if (upgraded) setSession(c, upgraded);
      record(c, {
        actor,
        action: "auth.passkey.add",
        target: session.user,
        outcome: "ok",
        details: { passkey: passkey.id, viaRecovery: session.scope === "recovery" },
      });
      return c.json({ passkey: passkeyView(passkey), scope: "full" as const }, 201);
    } catch (err) {
      return refused(c, "auth.passkey.add", err, actor);
    }
  });

  // A name is a label for the user's own eyes: renaming changes no credential, so no step-up.
  app.patch("/auth/passkeys/:id", limited, async (c) => {
    const session = currentSession(c);
    requireScope(session, "full");
    const id = c.req.param("id");
    if (!CredentialId.safeParse(id).success) throw new HypervisorError("validation_failed", "id: a passkey id (base64url)");
    const { name } = await readJson(c, RenamePasskeyBody);
    if (!auth.passkeys.rename(session.user, id, name)) throw new HypervisorError("not_found", "you have no passkey with this id");
    record(c, { actor: `user:${session.user}`, action: "auth.passkey.rename", target: session.user, outcome: "ok", details: { passkey: id } });
    return c.json({ passkey: passkeyView(auth.passkeys.get(id)!) }, 200);
  });

  app.delete("/auth/passkeys/:id", limited, async (c) => {
    const session = currentSession(c);
    requireScope(session, "full");
    const id = c.req.param("id");
    if (!CredentialId.safeParse(id).success) throw new HypervisorError("validation_failed", "id: a passkey id (base64url)");
    // The step-up travels as a JSON body; a DELETE without one is simply refused as unconfirmed.
    const { stepUp } = c.req.header("content-type") === undefined ? {} : await readJson(c, StepUpBody);
    const actor = `user:${session.user}`;
    try {
      const { revokedSessions } = await auth.removePasskey(session, id, stepUp);
      record(c, { actor, action: "auth.passkey.remove", target: session.user, outcome: "ok", details: { passkey: id, revokedSessions } });
      return c.json({ removed: id, revokedSessions }, 200);
    } catch (err) {
      return refused(c, "auth.passkey.remove", err, actor);
    }
  });

  app.post("/auth/recovery-codes", limited, async (c) => {
    const session = currentSession(c);
    requireScope(session, "full");
    const { stepUp } = await readJson(c, StepUpBody);
    const actor = `user:${session.user}`;
    try {
      const recoveryCodes = await auth.regenerateRecoveryCodes(session, stepUp);
      record(c, { actor, action: "auth.recovery-codes.regenerate", target: session.user, outcome: "ok" });
      return c.json({ recoveryCodes }, 200);
    } catch (err) {
      return refused(c, "auth.recovery-codes.regenerate", err, actor);
    }
  });
}

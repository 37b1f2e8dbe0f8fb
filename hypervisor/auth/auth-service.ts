import {
  generateAuthenticationOptions,
  generateRegistrationOptions,
  verifyAuthenticationResponse,
  verifyRegistrationResponse,
  type AuthenticationResponseJSON,
  type PublicKeyCredentialCreationOptionsJSON,
  type PublicKeyCredentialRequestOptionsJSON,
  type RegistrationResponseJSON,
} from "@simplewebauthn/server";
import { randomBytes } from "node:crypto";
import type { Config } from "../config.js";
import type { Db } from "../db/database.js";
import { HypervisorError, type ErrorCode } from "../errors.js";
import type { RouteController } from "../routing/route-controller.js";
import { CHALLENGE_TTL_MS, ChallengeStore } from "./challenge-store.js";
import { DecoyCredentials } from "./decoy-credentials.js";
import type { InviteStore } from "./invite-store.js";
import { PasskeyStore, type Passkey } from "./passkey-store.js";
import { RateLimiter } from "./rate-limiter.js";
import { RecoveryCodes } from "./recovery-codes.js";
import type { NewSession, SessionInfo, SessionStore } from "./session-store.js";

/**
 * A refused ceremony. `reason` is for the audit log (a fixed phrase, never a secret); `user` is
 * who it concerned, when known.
 */
export class CeremonyError extends HypervisorError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly reason: string,
    readonly user?: string,
    details?: Record<string, unknown>,
  ) {
    super(code, message, details);
  }
}

/** Failed sign-in attempts per user name: a few tries, then one every 12 s. */
export const FAILED_ATTEMPTS_PER_USER = { capacity: 5, perMinute: 5 };
/** Failed recovery attempts per user name and client address: as many, as slowly. */
export const FAILED_RECOVERIES_PER_CLIENT = FAILED_ATTEMPTS_PER_USER;
/**
 * Auth requests per client address (an IPv6 client by its /64): a registration or sign-in takes
 * two requests, so this is ten ceremonies a minute, far above what a person does and far below
 * what guessing needs.
 */
export const AUTH_REQUESTS_PER_ADDRESS = { capacity: 20, perMinute: 20 };

const RP_NAME = "hypervisor";

export interface AuthServiceDeps {
  db: Db;
  config: Pick<Config, "publicOrigin" | "rpId" | "registration">;
  routing: Pick<RouteController, "hasUser" | "prepareUser">;
  sessions: SessionStore;
  invites: InviteStore;
  now?: () => number;
}

export interface Registered {
  user: string;
  passkey: Passkey;
  recoveryCodes: string[];
  session: NewSession;
}

/**
 * Passkey accounts (WebAuthn Level 3 §7 ceremonies via @simplewebauthn/server), recovery codes
 * and the sessions they lead to. Routes parse, check and audit; this decides.
 */
export class AuthService {
  readonly passkeys: PasskeyStore;
  readonly recoveryCodes: RecoveryCodes;
  readonly challenges: ChallengeStore;
  readonly failures: RateLimiter;
  readonly recoveryFailures: RateLimiter;
  readonly addresses: RateLimiter;
  private readonly decoys: DecoyCredentials;
  private readonly expectedOrigin: string;

  constructor(private readonly deps: AuthServiceDeps) {
    const now = deps.now ?? Date.now;
    this.passkeys = new PasskeyStore(deps.db, now);
    this.recoveryCodes = new RecoveryCodes(deps.db, now);
    this.challenges = new ChallengeStore(now);
    this.failures = new RateLimiter(FAILED_ATTEMPTS_PER_USER, now);
    this.recoveryFailures = new RateLimiter(FAILED_RECOVERIES_PER_CLIENT, now);
    this.addresses = new RateLimiter(AUTH_REQUESTS_PER_ADDRESS, now);
    this.decoys = DecoyCredentials.of(deps.db);
    this.expectedOrigin = deps.config.publicOrigin.origin;
  }

  // --- registration (§7.1) -------------------------------------------------------------------

  /** `client`, here and below: the rate-limit key of the asking client, whose challenges it bounds. */
  async registrationOptions(username: string, inviteCode: string | undefined, client: string): Promise<PublicKeyCredentialCreationOptionsJSON> {
    const { registration } = this.deps.config;
    if (registration === "closed") throw new HypervisorError("forbidden", "registration is closed on this hypervisor");
    let inviteId: number | undefined;
    if (registration === "invite") {
      if (!inviteCode) throw new HypervisorError("forbidden", "registration needs an invite code");
      inviteId = this.deps.invites.find(inviteCode);
      if (inviteId === undefined) throw new HypervisorError("forbidden", "the invite code is not valid (unknown, used or expired)");
    }
    if (this.deps.routing.hasUser(username)) throw new HypervisorError("conflict", `the user name ${username} is taken`, { user: username });
    // A random user handle (§14.6.1): the user name never reaches the authenticator as an id.
    const handle = randomBytes(32).toString("base64url");
    const options = await generateRegistrationOptions({
      rpName: RP_NAME,
      rpID: this.deps.config.rpId,
      userName: username,
      userDisplayName: username,
      userID: Buffer.from(handle, "base64url"),
      attestationType: "none",
      timeout: CHALLENGE_TTL_MS,
      authenticatorSelection: { residentKey: "required", userVerification: "required" },
    });
    this.challenges.issue(options.challenge, { kind: "register", username, handle, inviteId }, client);
    return options;
  }

  /**
   * Verifies the new credential, then creates the user, its account, the passkey and the
   * recovery codes in one transaction: either all exist afterwards or none does.
   */
  async register(credential: RegistrationResponseJSON): Promise<Registered> {
    const challenge = this.challengeOf(credential.response.clientDataJSON, "bad_request");
    const ceremony = this.challenges.take(challenge, "register");
    if (!ceremony)
      throw new CeremonyError("bad_request", "the registration challenge is unknown, used or expired; start again", "challenge unknown, used or expired");
    const { username } = ceremony;
    const verified = await this.verifyNewCredential(credential, challenge, username);
    if (this.passkeys.get(verified.id)) throw new CeremonyError("conflict", "this passkey is already registered", "credential already registered", username);

    const createUser = await this.deps.routing.prepareUser();
    const issued = await this.recoveryCodes.issue();
    let passkey: Passkey;
    try {
      passkey = this.deps.db.transaction(() => {
        if (ceremony.inviteId !== undefined) this.deps.invites.consume(ceremony.inviteId, username);
        createUser(username);
        this.passkeys.createAccount(username, ceremony.handle);
        const added = this.passkeys.add({ ...verified, user: username });
        this.recoveryCodes.store(username, issued.hashes);
        return added;
      })();
    } catch (err) {
      // A concurrent registration took the name or the credential between the checks and here.
      if (isConstraintError(err)) throw new CeremonyError("conflict", "the user name or this passkey is already registered", "already registered", username);
      if (err instanceof HypervisorError) throw new CeremonyError(err.code, err.message, err.code === "conflict" ? "user name taken" : "refused", username);
      throw err;
    }
    const session = this.deps.sessions.create(username, "full");
    return { user: username, passkey, recoveryCodes: issued.codes, session };
  }

  // --- authentication (§7.2) -----------------------------------------------------------------

  /**
   * With a user name: that user's passkeys are offered, or, for a name without any, its decoys,
   * so the answer does not tell whether the name has an account. Without: any discoverable
   * credential.
   */
  async loginOptions(username: string | undefined, client: string): Promise<PublicKeyCredentialRequestOptionsJSON> {
    const mine = username ? this.passkeys.list(username) : [];
    const allow = username && mine.length === 0 ? this.decoys.for(username) : mine;
    const options = await generateAuthenticationOptions({
      rpID: this.deps.config.rpId,
      userVerification: "required",
      timeout: CHALLENGE_TTL_MS,
      ...(allow.length ? { allowCredentials: allow.map((p) => ({ id: p.id, transports: p.transports })) } : {}),
    });
    this.challenges.issue(options.challenge, { kind: "login", username }, client);
    return options;
  }

  async login(credential: AuthenticationResponseJSON): Promise<{ user: string; passkey: Passkey; session: NewSession }> {
    const challenge = this.challengeOf(credential.response.clientDataJSON, "unauthorized");
    const ceremony = this.challenges.take(challenge, "login");
    const passkey = this.passkeys.get(credential.id);
    const user = passkey?.user ?? ceremony?.username;
    // Failures count against the user name; past the limit they are answered 429. A valid
    // assertion still signs in: it cannot be guessed, and refusing it would let anyone lock
    // the owner out by failing on purpose.
    const refuse = (reason: string): never => {
      if (user && !this.failures.take(user).ok) this.checkFailures(user, reason);
      throw new CeremonyError("unauthorized", "sign-in failed: this passkey was not accepted", reason, user);
    };
    if (!ceremony) return refuse("challenge unknown, used or expired");
    if (!passkey) return refuse("unknown credential");
    if (ceremony.username && ceremony.username !== passkey.user) return refuse("credential belongs to another user");
    // §7.2 step 6: a returned user handle must be the handle of the credential's account.
    const userHandle = credential.response.userHandle;
    if (userHandle && userHandle !== this.passkeys.handleOf(passkey.user)) return refuse("user handle mismatch");
    let result;
    try {
      result = await verifyAuthenticationResponse({
        response: credential,
        expectedChallenge: challenge,
        expectedOrigin: this.expectedOrigin,
        expectedRPID: this.deps.config.rpId,
        credential: { id: passkey.id, publicKey: passkey.publicKey, counter: passkey.counter, transports: passkey.transports },
        requireUserVerification: true,
      });
    } catch (err) {
      return refuse(failureReason(err));
    }
    if (!result.verified) return refuse("signature invalid");
    this.passkeys.markUsed(passkey.id, result.authenticationInfo.newCounter, result.authenticationInfo.credentialBackedUp);
    return { user: passkey.user, passkey, session: this.deps.sessions.create(passkey.user, "full") };
  }

  // --- recovery --------------------------------------------------------------------------------

  /**
   * A single-use recovery code buys a session that may only enrol a new passkey. Codes can be
   * guessed, so past the failure limit even a right one waits, and is not even checked. The
   * limit counts per user name and client (`client`: its rate-limit key), so a stranger's
   * wrong codes never make the owner's right one wait (DESIGN §5). What a guesser with many
   * addresses gains is bounded by the codes' entropy: ten codes of about 59 bits each.
   */
  async recover(username: string, code: string, client: string): Promise<NewSession> {
    const key = `${client} ${username}`;
    this.checkFailures(username, "rate limited", this.recoveryFailures, key);
    if (!(await this.recoveryCodes.consume(username, code))) {
      this.recoveryFailures.take(key);
      throw new CeremonyError("unauthorized", "the user name or recovery code is wrong, or the code was used", "recovery code not accepted", username);
    }
    return this.deps.sessions.create(username, "recovery");
  }

  async regenerateRecoveryCodes(session: SessionInfo): Promise<string[]> {
    requireScope(session, "full");
    const issued = await this.recoveryCodes.issue();
    this.deps.db.transaction(() => this.recoveryCodes.store(session.user, issued.hashes))();
    return issued.codes;
  }

  // --- passkeys of a signed-in user ------------------------------------------------------------

  async addPasskeyOptions(session: SessionInfo, client: string): Promise<PublicKeyCredentialCreationOptionsJSON> {
    const handle = this.passkeys.handleOf(session.user);
    if (!handle) throw new HypervisorError("forbidden", "this user has no passkey account");
    const options = await generateRegistrationOptions({
      rpName: RP_NAME,
      rpID: this.deps.config.rpId,
      userName: session.user,
      userDisplayName: session.user,
      userID: Buffer.from(handle, "base64url"),
      attestationType: "none",
      timeout: CHALLENGE_TTL_MS,
      authenticatorSelection: { residentKey: "required", userVerification: "required" },
      // §5.4.3: the authenticator refuses to create a second credential for the same account.
      excludeCredentials: this.passkeys.list(session.user).map((p) => ({ id: p.id, transports: p.transports })),
    });
    this.challenges.issue(options.challenge, { kind: "add-passkey", user: session.user, sessionId: session.sessionId, handle }, client);
    return options;
  }

  /**
   * Enrols another passkey. From a recovery session, that session is replaced by a full one
   * (returned): possession of a new passkey is what a full session stands for.
   */
  async addPasskey(session: SessionInfo, credential: RegistrationResponseJSON, name?: string): Promise<{ passkey: Passkey; upgraded?: NewSession }> {
    const challenge = this.challengeOf(credential.response.clientDataJSON, "bad_request");
    const ceremony = this.challenges.take(challenge, "add-passkey");
    if (!ceremony || ceremony.sessionId !== session.sessionId || ceremony.user !== session.user) {
      throw new CeremonyError(
        "bad_request",
        "the challenge is unknown, used, expired or not this session's; start again",
        "challenge unknown, used or expired",
        session.user,
      );
    }
    const verified = await this.verifyNewCredential(credential, challenge, session.user);
    if (this.passkeys.get(verified.id))
      throw new CeremonyError("conflict", "this passkey is already registered", "credential already registered", session.user);
    let passkey: Passkey;
    try {
      passkey = this.passkeys.add({ ...verified, user: session.user, ...(name ? { name } : {}) });
    } catch (err) {
      if (isConstraintError(err)) throw new CeremonyError("conflict", "this passkey is already registered", "credential already registered", session.user);
      throw err;
    }
    if (session.scope === "full") return { passkey };
    this.deps.sessions.revoke(session.sessionId);
    return { passkey, upgraded: this.deps.sessions.create(session.user, "full") };
  }

  /**
   * Removes a passkey, never the last one, and signs out the user's other sessions: whoever
   * held the removed passkey may have signed in with it.
   */
  removePasskey(session: SessionInfo, id: string): { revokedSessions: number } {
    requireScope(session, "full");
    this.deps.db.transaction(() => {
      const mine = this.passkeys.list(session.user);
      if (!mine.some((p) => p.id === id)) throw new HypervisorError("not_found", "no such passkey on this account");
      if (mine.length === 1) throw new HypervisorError("conflict", "this is your only passkey; add another one before removing it");
      this.passkeys.remove(session.user, id);
    })();
    return { revokedSessions: this.deps.sessions.revokeUser(session.user, { except: session.sessionId }) };
  }

  // --- helpers ---------------------------------------------------------------------------------

  private checkFailures(user: string, reason = "rate limited", limiter = this.failures, key = user): void {
    const decision = limiter.check(key);
    if (!decision.ok) {
      throw new CeremonyError("rate_limited", "too many failed attempts for this user; wait and try again", reason, user, {
        retryAfterSeconds: decision.retryAfterSeconds,
      });
    }
  }

  private async verifyNewCredential(credential: RegistrationResponseJSON, challenge: string, user: string) {
    let result;
    try {
      result = await verifyRegistrationResponse({
        response: credential,
        expectedChallenge: challenge,
        expectedOrigin: this.expectedOrigin,
        expectedRPID: this.deps.config.rpId,
        requireUserVerification: true,
      });
    } catch (err) {
      const reason = failureReason(err);
      throw new CeremonyError("bad_request", `the passkey could not be verified (${reason})`, reason, user);
    }
    if (!result.verified) throw new CeremonyError("bad_request", "the passkey could not be verified", "attestation invalid", user);
    const info = result.registrationInfo;
    return {
      id: info.credential.id,
      publicKey: info.credential.publicKey,
      counter: info.credential.counter,
      transports: (info.credential.transports ?? []).slice(0, 8),
      deviceType: info.credentialDeviceType,
      backedUp: info.credentialBackedUp,
    };
  }

  /** The challenge the client answered, read from clientDataJSON (§5.8.1) to find its ceremony. */
  private challengeOf(clientDataJSON: string, code: ErrorCode): string {
    try {
      const data = JSON.parse(Buffer.from(clientDataJSON, "base64url").toString("utf8")) as { challenge?: unknown };
      if (typeof data.challenge === "string" && data.challenge.length > 0) return data.challenge;
    } catch {
      // falls through
    }
    throw new CeremonyError(code, "clientDataJSON is not readable", "clientDataJSON unreadable");
  }
}

export function requireScope(session: SessionInfo | undefined, scope: "full"): asserts session is SessionInfo {
  if (!session || session.scope !== scope) throw new HypervisorError("unauthorized", "sign in with a passkey first");
}

function isConstraintError(err: unknown): boolean {
  return typeof (err as { code?: unknown })?.code === "string" && (err as { code: string }).code.startsWith("SQLITE_CONSTRAINT");
}

/**
 * A fixed phrase for why the library refused a response. Its messages may quote the challenge,
 * which must not reach the audit log.
 */
function failureReason(err: unknown): string {
  const message = err instanceof Error ? err.message : "";
  if (/RP ID/i.test(message)) return "rp id hash mismatch";
  if (/origin/i.test(message)) return "origin mismatch";
  if (/challenge/i.test(message)) return "challenge mismatch";
  if (/response type/i.test(message)) return "wrong ceremony type";
  if (/counter/i.test(message)) return "signature counter went backwards";
  if (/user verification|could not be verified/i.test(message)) return "user not verified";
  if (/not present|presence/i.test(message)) return "user not present";
  if (/alg/i.test(message)) return "unsupported algorithm";
  if (/signature/i.test(message)) return "signature invalid";
  return "malformed response";
}

import {
  generateAuthenticationOptions,
  generateRegistrationOptions,
  verifyAuthenticationResponse,
  verifyRegistrationResponse,
  type AuthenticationResponseJSON,
  type PublicKeyCredentialCreationOptionsJSON,
  type PublicKeyCredentialRequestOptionsJSON,
  type RegistrationResponseJSON,
} from "./webauthn.js";
import { randomBytes } from "node:crypto";
import type { Config } from "../config.js";
import type { Db } from "../db/database.js";
import { HypervisorError, type ErrorCode } from "../errors.js";
import type { UserDirectory } from "../users/user-directory.js";
import { CHALLENGE_TTL_MS, ChallengeStore, type StepUpAction } from "./challenge-store.js";
import { DecoyCredentials } from "./decoy-credentials.js";
import type { InviteStore } from "./invite-store.js";
import { passkeyName } from "./passkey-name.js";
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

/**
 * How fresh a step-up assertion must be: the page asks for it right before the change it
 * confirms, so a minute or two is plenty, and an assertion left lying around is soon worthless.
 */
export const STEP_UP_TTL_MS = 2 * 60 * 1000;

export interface AuthServiceDeps {
  db: Db;
  config: Pick<Config, "publicOrigin" | "rpId" | "registration">;
  users: Pick<UserDirectory, "hasUser" | "removedUser" | "prepareUser">;
  sessions: SessionStore;
  invites: InviteStore;
  now?: () => number;
}

/** A passkey ceremony that signed a user in, with the session it leads to. */
export interface SignedIn {
  user: string;
  passkey: Passkey;
  session: NewSession;
}

export interface Registered extends SignedIn {
  recoveryCodes: string[];
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
  private readonly now: () => number;
  private readonly decoys: DecoyCredentials;

  constructor(private readonly deps: AuthServiceDeps) {
    const now = (this.now = deps.now ?? Date.now);
    this.passkeys = new PasskeyStore(deps.db, now);
    this.recoveryCodes = new RecoveryCodes(deps.db, now);
    this.challenges = new ChallengeStore(now);
    this.failures = new RateLimiter(FAILED_ATTEMPTS_PER_USER, now);
    this.recoveryFailures = new RateLimiter(FAILED_RECOVERIES_PER_CLIENT, now);
    this.addresses = new RateLimiter(AUTH_REQUESTS_PER_ADDRESS, now);
    this.decoys = DecoyCredentials.of(deps.db);
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
    if (this.deps.users.hasUser(username)) throw new HypervisorError("conflict", `the user name ${username} is taken`, { user: username });
    // A removed user's data is kept under its name: a new account of that name would be handed it.
    if (this.deps.users.removedUser(username)) {
      throw new HypervisorError("conflict", `the user name ${username} belonged to a removed account and is not available`, { user: username });
    }
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
  async register(credential: RegistrationResponseJSON, from: { userAgent?: string | undefined } = {}): Promise<Registered> {
    const challenge = this.challengeOf(credential.response.clientDataJSON, "bad_request");
    const ceremony = this.challenges.take(challenge, "register");
    if (!ceremony)
      throw new CeremonyError("bad_request", "the registration challenge is unknown, used or expired; start again", "challenge unknown, used or expired");
    const { username } = ceremony;
    const verified = await this.verifyNewCredential(credential, challenge, username);
    if (this.passkeys.get(verified.id)) throw new CeremonyError("conflict", "this passkey is already registered", "credential already registered", username);

    const createUser = await this.deps.users.prepareUser();
    const issued = await this.recoveryCodes.issue();
    let passkey: Passkey;
    try {
      passkey = this.deps.db.transaction(() => {
        if (ceremony.inviteId !== undefined) this.deps.invites.consume(ceremony.inviteId, username);
        createUser(username);
        this.passkeys.createAccount(username, ceremony.handle);
        const added = this.passkeys.add({ ...verified, user: username, name: this.newName(verified, username, from.userAgent) });
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

  async login(credential: AuthenticationResponseJSON): Promise<SignedIn> {
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
    const failed = await this.verifyAssertion(credential, challenge, passkey);
    if (failed) return refuse(failed);
    return { user: passkey.user, passkey, session: this.deps.sessions.create(passkey.user, "full") };
  }

  // --- step-up: a fresh assertion for one change (DESIGN §5) ------------------------------------

  /** Request options for the session's own passkeys, the challenge bound to this session and action. */
  /** `client` is the key the client's outstanding challenges count under (its address). */
  async stepUpOptions(session: SessionInfo, action: StepUpAction, client: string): Promise<PublicKeyCredentialRequestOptionsJSON> {
    requireScope(session, "full");
    const options = await generateAuthenticationOptions({
      rpID: this.deps.config.rpId,
      userVerification: "required",
      timeout: STEP_UP_TTL_MS,
      allowCredentials: this.passkeys.list(session.user).map((p) => ({ id: p.id, transports: p.transports })),
    });
    this.challenges.issue(
      options.challenge,
      {
        kind: "step-up",
        user: session.user,
        sessionId: session.sessionId,
        action,
        notAfter: this.now() + STEP_UP_TTL_MS,
      },
      client,
    );
    return options;
  }

  /**
   * For a change outside this service (the account page's data actions, a user's own egress
   * keys): refused unless a full session confirmed it with a fresh step-up.
   */
  async confirmStepUp(session: SessionInfo | undefined, action: StepUpAction, assertion: AuthenticationResponseJSON | undefined): Promise<void> {
    requireScope(session, "full");
    await this.requireStepUp(session, action, assertion);
  }

  /**
   * Refuses `action` unless `assertion` answers a step-up challenge this session asked for this
   * action, within STEP_UP_TTL_MS, signed by one of the session user's passkeys with user
   * verification. The challenge is spent either way: a refused assertion cannot be tried again.
   */
  private async requireStepUp(session: SessionInfo, action: StepUpAction, assertion: AuthenticationResponseJSON | undefined): Promise<void> {
    const refuse = (reason: string, message = "confirm this change with one of your passkeys first"): never => {
      throw new CeremonyError("step_up_required", message, reason, session.user, { action });
    };
    if (!assertion) return refuse("no step-up assertion");
    const challenge = this.challengeOf(assertion.response.clientDataJSON, "step_up_required");
    const ceremony = this.challenges.take(challenge, "step-up");
    if (!ceremony || ceremony.notAfter <= this.now())
      return refuse("step-up challenge unknown, used or expired", "the confirmation expired or was used; confirm again");
    if (ceremony.sessionId !== session.sessionId || ceremony.user !== session.user) return refuse("step-up made by another session");
    if (ceremony.action !== action) return refuse("step-up made for another action", `that confirmation was for ${ceremony.action}, not ${action}`);
    const passkey = this.passkeys.get(assertion.id);
    if (!passkey || passkey.user !== session.user) return refuse("step-up credential not the user's");
    const failed = await this.verifyAssertion(assertion, challenge, passkey);
    if (failed) return refuse(failed);
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
    // Before the code is spent: a disabled user keeps its codes for when it is enabled again.
    this.deps.sessions.refuseDisabled(username);
    if (!(await this.recoveryCodes.consume(username, code))) {
      this.recoveryFailures.take(key);
      throw new CeremonyError("unauthorized", "the user name or recovery code is wrong, or the code was used", "recovery code not accepted", username);
    }
    return this.deps.sessions.create(username, "recovery");
  }

  async regenerateRecoveryCodes(session: SessionInfo, stepUp: AuthenticationResponseJSON | undefined): Promise<string[]> {
    requireScope(session, "full");
    await this.requireStepUp(session, "recovery-codes.regenerate", stepUp);
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
   * Enrols another passkey. A full session confirms it with a step-up first; a recovery session
   * cannot (its passkeys are lost) and may enrol without one, after which it is replaced by a
   * full session (returned): possession of a new passkey is what a full session stands for.
   */
  async addPasskey(
    session: SessionInfo,
    credential: RegistrationResponseJSON,
    opts: { name?: string | undefined; stepUp?: AuthenticationResponseJSON | undefined; userAgent?: string | undefined } = {},
  ): Promise<{ passkey: Passkey; upgraded?: NewSession }> {
    const { name } = opts;
    if (session.scope === "full") await this.requireStepUp(session, "passkey.add", opts.stepUp);
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
      passkey = this.passkeys.add({ ...verified, user: session.user, name: name ?? this.newName(verified, session.user, opts.userAgent) });
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
  async removePasskey(session: SessionInfo, id: string, stepUp: AuthenticationResponseJSON | undefined): Promise<{ revokedSessions: number }> {
    requireScope(session, "full");
    await this.requireStepUp(session, "passkey.remove", stepUp);
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

  /** Verifies an assertion (WebAuthn L3 §7.2) and records the new counter; the reason when refused. */
  private async verifyAssertion(credential: AuthenticationResponseJSON, challenge: string, passkey: Passkey): Promise<string | undefined> {
    // §7.2 step 6: a returned user handle must be the handle of the credential's account.
    const userHandle = credential.response.userHandle;
    if (userHandle && userHandle !== this.passkeys.handleOf(passkey.user)) return "user handle mismatch";
    let result;
    try {
      result = await verifyAuthenticationResponse({
        response: credential,
        ...this.expectations(challenge),
        credential: { id: passkey.id, publicKey: passkey.publicKey, counter: passkey.counter, transports: passkey.transports },
      });
    } catch (err) {
      return failureReason(err);
    }
    if (!result.verified) return "signature invalid";
    this.passkeys.markUsed(passkey.id, result.authenticationInfo.newCounter, result.authenticationInfo.credentialBackedUp);
    return undefined;
  }

  /** A new passkey's name when its user gave none (passkeyName). */
  private newName(p: { transports: string[]; backedUp: boolean }, user: string, userAgent: string | undefined): string {
    const taken = this.passkeys.list(user).map((k) => k.name);
    return passkeyName({ transports: p.transports, backedUp: p.backedUp, userAgent, at: this.now(), taken });
  }

  private async verifyNewCredential(credential: RegistrationResponseJSON, challenge: string, user: string) {
    let result;
    try {
      result = await verifyRegistrationResponse({
        response: credential,
        ...this.expectations(challenge),
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

  /**
   * What every ceremony must show this relying party (§7.1, §7.2): our challenge, origin and RP
   * ID, and a verified user. One place, so registration and sign-in cannot drift apart.
   */
  private expectations(challenge: string) {
    return {
      expectedChallenge: challenge,
      expectedOrigin: this.deps.config.publicOrigin.origin,
      expectedRPID: this.deps.config.rpId,
      requireUserVerification: true,
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

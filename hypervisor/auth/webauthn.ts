import type * as SimpleWebAuthn from "@simplewebauthn/server";

/**
 * The four WebAuthn ceremony steps of @simplewebauthn/server, loaded on the first ceremony: the
 * package and its ASN.1 and COSE dependencies are the largest part of the daemon's module graph,
 * and nothing before a sign-in needs them, so a restarted daemon serves sooner without them.
 */
let loaded: Promise<typeof SimpleWebAuthn> | undefined;
const load = () => (loaded ??= import("@simplewebauthn/server"));

export const generateRegistrationOptions: typeof SimpleWebAuthn.generateRegistrationOptions = async (options) =>
  (await load()).generateRegistrationOptions(options);
export const verifyRegistrationResponse: typeof SimpleWebAuthn.verifyRegistrationResponse = async (options) =>
  (await load()).verifyRegistrationResponse(options);
export const generateAuthenticationOptions: typeof SimpleWebAuthn.generateAuthenticationOptions = async (options) =>
  (await load()).generateAuthenticationOptions(options);
export const verifyAuthenticationResponse: typeof SimpleWebAuthn.verifyAuthenticationResponse = async (options) =>
  (await load()).verifyAuthenticationResponse(options);

export type {
  AuthenticationResponseJSON,
  PublicKeyCredentialCreationOptionsJSON,
  PublicKeyCredentialRequestOptionsJSON,
  RegistrationResponseJSON,
} from "@simplewebauthn/server";

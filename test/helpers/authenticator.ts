import { createHash, generateKeyPairSync, randomBytes, randomInt, sign, type KeyObject } from "node:crypto";
import { request } from "node:http";

// --- a minimal CBOR encoder (RFC 8949 §3): what WebAuthn attestation objects and COSE keys use ---

export type CborValue = number | string | Uint8Array | CborValue[] | Map<CborValue, CborValue>;

function head(major: number, n: number): Buffer {
  if (n < 24) return Buffer.from([(major << 5) | n]);
  if (n < 0x100) return Buffer.from([(major << 5) | 24, n]);
  if (n < 0x10000) {
    const b = Buffer.alloc(3);
    b[0] = (major << 5) | 25;
    b.writeUInt16BE(n, 1);
    return b;
  }
  const b = Buffer.alloc(5);
  b[0] = (major << 5) | 26;
  b.writeUInt32BE(n, 1);
  return b;
}

export function cbor(value: CborValue): Buffer {
  if (typeof value === "number") {
    if (!Number.isInteger(value)) throw new Error("only integers are encoded");
    return value >= 0 ? head(0, value) : head(1, -1 - value);
  }
  if (typeof value === "string") {
    const bytes = Buffer.from(value, "utf8");
    return Buffer.concat([head(3, bytes.length), bytes]);
  }
  if (value instanceof Uint8Array) return Buffer.concat([head(2, value.length), value]);
  if (Array.isArray(value)) return Buffer.concat([head(4, value.length), ...value.map(cbor)]);
  const parts = [head(5, value.size)];
  for (const [k, v] of value) parts.push(cbor(k), cbor(v));
  return Buffer.concat(parts);
}

// --- a software authenticator: ES256, "none" attestation, resident keys, user verification ---

const b64url = (b: Uint8Array | string) => Buffer.from(b).toString("base64url");
const sha256 = (b: Uint8Array | string) => createHash("sha256").update(b).digest();
const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};

/** authenticatorData flags (WebAuthn L3 §6.1). */
const UP = 0x01;
const UV = 0x04;
const AT = 0x40;

export interface CreationOptionsJSON {
  challenge: string;
  rp: { id?: string; name: string };
  user: { id: string; name: string; displayName: string };
  excludeCredentials?: { id: string }[];
}

export interface RequestOptionsJSON {
  challenge: string;
  rpId?: string;
  allowCredentials?: { id: string }[];
}

export interface StoredCredential {
  id: Buffer;
  privateKey: KeyObject;
  rpId: string;
  userHandle: string;
  signCount: number;
}

/** What a test may falsify in a ceremony, to see the server refuse it. */
export interface Tamper {
  origin?: string;
  /** The RP ID whose hash goes into authenticatorData. */
  rpId?: string;
  challenge?: string;
  type?: string;
  userVerified?: boolean;
  /** Sign something other than authenticatorData ‖ hash(clientDataJSON). */
  badSignature?: boolean;
  /** Registration: the credential ID to use; assertion: which stored credential answers. */
  credentialId?: Buffer;
  /** Assertion: the user handle to report instead of the stored one (null: none). */
  userHandle?: string | null;
}

export interface RegistrationJSON {
  id: string;
  rawId: string;
  type: "public-key";
  response: { clientDataJSON: string; attestationObject: string; transports: string[] };
  authenticatorAttachment: "platform";
  clientExtensionResults: Record<string, unknown>;
}

export interface AssertionJSON {
  id: string;
  rawId: string;
  type: "public-key";
  response: { clientDataJSON: string; authenticatorData: string; signature: string; userHandle?: string };
  authenticatorAttachment: "platform";
  clientExtensionResults: Record<string, unknown>;
}

/**
 * A platform authenticator in software, answering navigator.credentials.create/get the way a
 * browser would serialise them (WebAuthn L3 §5.1 JSON). Keys are P-256 (COSE alg -7).
 */
export class SoftwareAuthenticator {
  readonly credentials: StoredCredential[] = [];

  constructor(readonly origin: string) {}

  create(options: CreationOptionsJSON, tamper: Tamper = {}): RegistrationJSON {
    const rpId = options.rp.id ?? new URL(this.origin).hostname;
    const excluded = new Set((options.excludeCredentials ?? []).map((c) => c.id));
    if (this.credentials.some((c) => excluded.has(b64url(c.id)))) throw new Error("InvalidStateError: credential excluded");
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const jwk = publicKey.export({ format: "jwk" });
    // COSE_Key (RFC 9052 §7, RFC 9053 §7.1.1): kty EC2, alg ES256, crv P-256, x, y.
    const coseKey = cbor(
      new Map<CborValue, CborValue>([
        [1, 2],
        [3, -7],
        [-1, 1],
        [-2, Buffer.from(jwk.x!, "base64url")],
        [-3, Buffer.from(jwk.y!, "base64url")],
      ]),
    );
    const id = tamper.credentialId ?? randomBytes(32);
    const idLength = Buffer.alloc(2);
    idLength.writeUInt16BE(id.length);
    const flags = UP | (tamper.userVerified === false ? 0 : UV) | AT;
    const authData = Buffer.concat([sha256(tamper.rpId ?? rpId), Buffer.from([flags]), u32(0), Buffer.alloc(16), idLength, id, coseKey]);
    const clientDataJSON = JSON.stringify({
      type: tamper.type ?? "webauthn.create",
      challenge: tamper.challenge ?? options.challenge,
      origin: tamper.origin ?? this.origin,
      crossOrigin: false,
    });
    const attestationObject = cbor(
      new Map<CborValue, CborValue>([
        ["fmt", "none"],
        ["attStmt", new Map()],
        ["authData", authData],
      ]),
    );
    this.credentials.push({ id, privateKey, rpId, userHandle: options.user.id, signCount: 0 });
    return {
      id: b64url(id),
      rawId: b64url(id),
      type: "public-key",
      response: { clientDataJSON: b64url(clientDataJSON), attestationObject: b64url(attestationObject), transports: ["internal"] },
      authenticatorAttachment: "platform",
      clientExtensionResults: {},
    };
  }

  get(options: RequestOptionsJSON, tamper: Tamper = {}): AssertionJSON {
    const rpId = options.rpId ?? new URL(this.origin).hostname;
    const allowed = new Set((options.allowCredentials ?? []).map((c) => c.id));
    const candidates = this.credentials.filter((c) => (allowed.size ? allowed.has(b64url(c.id)) : c.rpId === rpId));
    const credential = tamper.credentialId ? this.credentials.find((c) => c.id.equals(tamper.credentialId!)) : candidates.at(-1);
    if (!credential) throw new Error("NotAllowedError: no credential for this request");
    credential.signCount += 1;
    const flags = UP | (tamper.userVerified === false ? 0 : UV);
    const authData = Buffer.concat([sha256(tamper.rpId ?? rpId), Buffer.from([flags]), u32(credential.signCount)]);
    const clientDataJSON = JSON.stringify({
      type: tamper.type ?? "webauthn.get",
      challenge: tamper.challenge ?? options.challenge,
      origin: tamper.origin ?? this.origin,
      crossOrigin: false,
    });
    const signed = Buffer.concat([authData, sha256(tamper.badSignature ? `${clientDataJSON} ` : clientDataJSON)]);
    // ECDSA over SHA-256, DER-encoded (§6.5.5, "packed"/"none" assertion signatures).
    const signature = sign("sha256", signed, credential.privateKey);
    const userHandle = tamper.userHandle === undefined ? credential.userHandle : tamper.userHandle;
    return {
      id: b64url(credential.id),
      rawId: b64url(credential.id),
      type: "public-key",
      response: {
        clientDataJSON: b64url(clientDataJSON),
        authenticatorData: b64url(authData),
        signature: b64url(signature),
        ...(userHandle === null ? {} : { userHandle }),
      },
      authenticatorAttachment: "platform",
      clientExtensionResults: {},
    };
  }
}

// --- a browser-like HTTP client for the public listener ---

export interface PublicResponse<T = any> {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: T;
  text: string;
}

/**
 * Talks to the public listener as a browser on `origin` would: sends Origin, keeps the
 * hv_session cookie. Test daemons trust loopback as their TLS front (test/helpers/daemon.ts)
 * and believe the X-Forwarded-For hop it adds, so `address` is the client address they see
 * (rate limits, audit).
 */
export class PublicClient {
  cookie: string | undefined;

  constructor(
    readonly baseUrl: string,
    readonly origin: string,
    public address = testAddress(),
  ) {}

  get<T = any>(path: string, headers: Record<string, string> = {}): Promise<PublicResponse<T>> {
    return this.send("GET", path, undefined, headers);
  }

  post<T = any>(path: string, body?: unknown, headers: Record<string, string> = {}): Promise<PublicResponse<T>> {
    return this.send("POST", path, body === undefined ? undefined : JSON.stringify(body), { "content-type": "application/json", ...headers });
  }

  delete<T = any>(path: string, body?: unknown): Promise<PublicResponse<T>> {
    if (body === undefined) return this.send("DELETE", path);
    // Node frames a DELETE body only when told its length: DELETE is not chunked by default.
    const raw = JSON.stringify(body);
    return this.send("DELETE", path, raw, { "content-type": "application/json", "content-length": String(Buffer.byteLength(raw)) });
  }

  /** Sends exactly `raw` (or nothing), for tests of malformed input. */
  send<T = any>(method: string, path: string, raw?: string | Buffer, headers: Record<string, string> = {}): Promise<PublicResponse<T>> {
    const url = new URL(path, this.baseUrl);
    const all: Record<string, string> = {
      origin: this.origin,
      "x-forwarded-for": this.address,
      ...(this.cookie ? { cookie: `hv_session=${this.cookie}` } : {}),
      ...headers,
    };
    // An empty value means "send no such header" (e.g. a request without Origin).
    for (const [name, value] of Object.entries(all)) if (value === "") delete all[name];
    return new Promise((resolve, reject) => {
      let settled = false;
      // agent: false: a connection per request, so a refused upload cannot spoil the next request.
      const req = request({ host: url.hostname, port: url.port, method, path: `${url.pathname}${url.search}`, headers: all, agent: false }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          settled = true;
          this.takeCookie(res.headers["set-cookie"]);
          const text = Buffer.concat(chunks).toString("utf8");
          let body: unknown = text;
          try {
            body = JSON.parse(text);
          } catch {
            // not JSON: the test sees the text
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: body as T, text });
        });
      });
      // A server that answers (413) before reading the whole body may reset the rest of the upload.
      req.on("error", (err) => {
        if (!settled) setTimeout(() => !settled && reject(err), 200);
      });
      req.end(raw);
    });
  }

  private takeCookie(setCookie: string[] | undefined): void {
    for (const line of setCookie ?? []) {
      const m = /^hv_session=([^;]*)/.exec(line);
      if (!m) continue;
      this.cookie = /Max-Age=0\b/i.test(line) || !m[1] ? undefined : m[1];
    }
  }

  // --- ceremonies, as the pages run them ---

  async register(username: string, authenticator: SoftwareAuthenticator, opts: { invite?: string; tamper?: Tamper } = {}) {
    const options = await this.post("/auth/register/options", { username, ...(opts.invite ? { invite: opts.invite } : {}) });
    if (options.status !== 200) return options;
    const credential = authenticator.create(options.body.options, opts.tamper);
    return this.post<{ user: string; recoveryCodes: string[] }>("/auth/register/verify", { credential });
  }

  async login(authenticator: SoftwareAuthenticator, opts: { username?: string; tamper?: Tamper } = {}) {
    const options = await this.post("/auth/login/options", opts.username ? { username: opts.username } : {});
    if (options.status !== 200) return options;
    const credential = authenticator.get(options.body.options, opts.tamper);
    return this.post<{ user: string }>("/auth/login/verify", { credential });
  }

  recover(username: string, code: string) {
    return this.post<{ user: string; scope: string }>("/auth/recovery", { username, code });
  }

  /** A step-up assertion for `action` (DESIGN §5), made with `authenticator` as the account page does. */
  async stepUp(authenticator: SoftwareAuthenticator, action: string, tamper?: Tamper): Promise<AssertionJSON> {
    const options = await this.post("/auth/step-up/options", { action });
    if (options.status !== 200) throw new Error(`POST /auth/step-up/options answered ${options.status}: ${options.text}`);
    return authenticator.get(options.body.options, tamper);
  }

  /** `confirmWith`: the passkey a full session confirms the change with; a recovery session has none. */
  async addPasskey(authenticator: SoftwareAuthenticator, opts: { tamper?: Tamper; name?: string; confirmWith?: SoftwareAuthenticator } = {}) {
    const options = await this.post("/auth/passkeys/options", {});
    if (options.status !== 200) return options;
    const credential = authenticator.create(options.body.options, opts.tamper);
    const stepUp = opts.confirmWith ? await this.stepUp(opts.confirmWith, "passkey.add") : undefined;
    return this.post("/auth/passkeys/verify", { credential, ...(opts.name ? { name: opts.name } : {}), ...(stepUp ? { stepUp } : {}) });
  }

  async removePasskey(id: string, confirmWith: SoftwareAuthenticator) {
    return this.delete(`/auth/passkeys/${id}`, { stepUp: await this.stepUp(confirmWith, "passkey.remove") });
  }

  async regenerateRecoveryCodes(confirmWith: SoftwareAuthenticator) {
    return this.post<{ recoveryCodes: string[] }>("/auth/recovery-codes", { stepUp: await this.stepUp(confirmWith, "recovery-codes.regenerate") });
  }

  logout() {
    return this.post("/auth/logout");
  }
}

let addressCount = 0;
const addressPrefix = `10.${randomInt(0, 256)}`;
/** A different private address for each call, so each client has its own rate-limit bucket. */
export function testAddress(): string {
  addressCount += 1;
  return `${addressPrefix}.${(addressCount >> 8) % 256}.${addressCount % 256}`;
}

/**
 * The script of the sign-in and account pages, served as /_hv/assets/auth.js (a classic script:
 * no imports or exports, so the compiled file runs as it is under script-src 'self').
 * body[data-page] says which page this is; body[data-next] where to go after signing in.
 * WebAuthn's binary fields are converted to and from base64url by hand (WebAuthn L3 §5.1, the
 * JSON encodings @simplewebauthn expects).
 */
(() => {
  /** The options as the server sends them: WebAuthn's options with base64url for the bytes. */
  type DescriptorJSON = Omit<PublicKeyCredentialDescriptor, "id"> & { id: string };
  type CreationOptionsJSON = Omit<PublicKeyCredentialCreationOptions, "challenge" | "user" | "excludeCredentials"> & {
    challenge: string;
    user: Omit<PublicKeyCredentialUserEntity, "id"> & { id: string };
    excludeCredentials?: DescriptorJSON[];
  };
  type RequestOptionsJSON = Omit<PublicKeyCredentialRequestOptions, "challenge" | "allowCredentials"> & {
    challenge: string;
    allowCredentials?: DescriptorJSON[];
  };
  type CredentialJSON = {
    id: string;
    rawId: string;
    type: string;
    authenticatorAttachment: string | undefined;
    clientExtensionResults: AuthenticationExtensionsClientOutputs;
    response: Record<string, string | string[] | undefined>;
  };
  interface RecoveryCodes {
    recoveryCodes: string[];
  }

  class RequestError extends Error {
    constructor(
      message: string,
      readonly status: number,
    ) {
      super(message);
    }
  }

  function find<T extends HTMLElement>(id: string, type: abstract new () => T): T | null {
    const el = document.getElementById(id);
    return el instanceof type ? el : null;
  }

  function get<T extends HTMLElement>(id: string, type: abstract new () => T): T {
    const el = find(id, type);
    if (!el) throw new Error(`#${id} is missing from the page`);
    return el;
  }

  const body = document.body;
  const page = body.getAttribute("data-page");
  const next = body.getAttribute("data-next") || "/";
  const statusEl = get("status", HTMLElement);

  function say(text: string, isError?: boolean): void {
    statusEl.textContent = text;
    statusEl.className = isError ? "status error" : "status";
  }

  function toB64url(buffer: ArrayBuffer): string {
    const bytes = new Uint8Array(buffer);
    let s = "";
    for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]!);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function fromB64url(text: string): ArrayBuffer {
    let b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }

  async function api<T = unknown>(method: string, path: string, payload?: unknown): Promise<T> {
    const headers: Record<string, string> = { Accept: "application/json" };
    const init: RequestInit = { method, credentials: "same-origin", headers };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    const res = await fetch(path, init);
    const data = (await res.json().catch(() => null)) as { error?: { message?: string } } | null;
    if (!res.ok) throw new RequestError(data && data.error ? (data.error.message ?? "") : `request failed (HTTP ${res.status})`, res.status);
    return data as T;
  }

  function withIds(list: DescriptorJSON[] | undefined): PublicKeyCredentialDescriptor[] {
    return (list || []).map((c) => ({ ...c, id: fromB64url(c.id) }));
  }

  function creationOptions(o: CreationOptionsJSON): CredentialCreationOptions {
    const publicKey: PublicKeyCredentialCreationOptions = {
      ...o,
      challenge: fromB64url(o.challenge),
      user: { ...o.user, id: fromB64url(o.user.id) },
      excludeCredentials: withIds(o.excludeCredentials),
    };
    return { publicKey };
  }

  function requestOptions(o: RequestOptionsJSON): CredentialRequestOptions {
    const { allowCredentials, ...rest } = o;
    const publicKey: PublicKeyCredentialRequestOptions = { ...rest, challenge: fromB64url(o.challenge) };
    if (allowCredentials) publicKey.allowCredentials = withIds(allowCredentials);
    return { publicKey };
  }

  /** What both ceremonies send: the credential, its client data and the ceremony's own response fields. */
  function credentialJSON(cred: PublicKeyCredential, response: CredentialJSON["response"]): CredentialJSON {
    return {
      id: cred.id,
      rawId: toB64url(cred.rawId),
      type: cred.type,
      authenticatorAttachment: cred.authenticatorAttachment || undefined,
      clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
      response: { clientDataJSON: toB64url(cred.response.clientDataJSON), ...response },
    };
  }

  function attestationJSON(cred: PublicKeyCredential): CredentialJSON {
    const r = cred.response as AuthenticatorAttestationResponse;
    return credentialJSON(cred, {
      attestationObject: toB64url(r.attestationObject),
      transports: typeof r.getTransports === "function" ? r.getTransports() : undefined,
    });
  }

  function assertionJSON(cred: PublicKeyCredential): CredentialJSON {
    const r = cred.response as AuthenticatorAssertionResponse;
    return credentialJSON(cred, {
      authenticatorData: toB64url(r.authenticatorData),
      signature: toB64url(r.signature),
      userHandle: r.userHandle && r.userHandle.byteLength ? toB64url(r.userHandle) : undefined,
    });
  }

  function explain(err: unknown): string {
    const e = err as { name?: unknown; message?: unknown } | null | undefined;
    if (e && e.name === "NotAllowedError") return "The passkey prompt was cancelled or timed out. Try again.";
    if (e && e.name === "InvalidStateError") return "This authenticator already holds a passkey for this account.";
    if (e && e.name === "SecurityError") return "Passkeys are not available here: open the hypervisor at its public address.";
    return e && e.message ? String(e.message) : String(err);
  }

  function supported(): boolean {
    if (window.PublicKeyCredential && navigator.credentials) return true;
    say("This browser does not support passkeys.", true);
    return false;
  }

  // A publicKey request resolves to a PublicKeyCredential or null (WebAuthn L3 §5.1.3, §5.1.4).
  async function createPasskey(optionsPath: string, optionsBody: unknown): Promise<CredentialJSON> {
    const o = await api<{ options: CreationOptionsJSON }>("POST", optionsPath, optionsBody);
    const cred = (await navigator.credentials.create(creationOptions(o.options))) as PublicKeyCredential | null;
    if (!cred) throw new Error("No passkey was created.");
    return attestationJSON(cred);
  }

  /**
   * A fresh assertion with one of the user's passkeys, made for `action` (the server binds its
   * challenge to this session and action, for a minute or two): the step-up that adding or
   * removing a passkey and making new recovery codes need. Asked for right before the change.
   */
  async function confirmWithPasskey(action: string): Promise<CredentialJSON> {
    const o = await api<{ options: RequestOptionsJSON }>("POST", "/auth/step-up/options", { action });
    say("Confirm with one of your passkeys…");
    const cred = (await navigator.credentials.get(requestOptions(o.options))) as PublicKeyCredential | null;
    if (!cred) throw new Error("No passkey was chosen.");
    return assertionJSON(cred);
  }

  /** A recovery session enrols without a step-up: its passkeys are what was lost. */
  async function addPasskey(confirm: boolean): Promise<unknown> {
    const credential = await createPasskey("/auth/passkeys/options", {});
    return api("POST", "/auth/passkeys/verify", confirm ? { credential, stepUp: await confirmWithPasskey("passkey.add") } : { credential });
  }

  function showCodes(codes: string[]): void {
    const list = get("recovery-codes", HTMLElement);
    list.textContent = "";
    codes.forEach((c) => {
      const li = document.createElement("li");
      const code = document.createElement("code");
      code.textContent = c;
      li.appendChild(code);
      list.appendChild(li);
    });
    get("codes", HTMLElement).hidden = false;
  }

  /** Runs an action from a button or form: busy while it runs, errors to the status line. */
  function action(button: HTMLButtonElement, waiting: string, run: () => Promise<unknown>): (ev?: Event) => void {
    return (ev) => {
      if (ev) ev.preventDefault();
      if (button.disabled || !supported()) return;
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      say(waiting);
      void (async () => {
        try {
          await run();
        } catch (err) {
          say(explain(err), true);
        }
        button.disabled = false;
        button.removeAttribute("aria-busy");
      })();
    };
  }

  function value(id: string): string {
    const el = find(id, HTMLInputElement);
    return el ? el.value.trim() : "";
  }

  const button = (id: string) => get(id, HTMLButtonElement);

  if (page === "register") {
    // Absent when registration is closed: the page then only says so.
    const registerForm = find("register-form", HTMLFormElement);
    registerForm?.addEventListener(
      "submit",
      action(button("register"), "Waiting for your passkey…", async () => {
        const payload: { username: string; invite?: string } = { username: value("username").toLowerCase() };
        if (value("invite")) payload.invite = value("invite");
        const credential = await createPasskey("/auth/register/options", payload);
        const done = await api<RecoveryCodes & { user: string }>("POST", "/auth/register/verify", { credential });
        registerForm.hidden = true;
        showCodes(done.recoveryCodes);
        say(`Signed up as ${done.user}. Save your recovery codes now: they are shown only once.`);
        get("continue", HTMLElement).focus();
      }),
    );
  }

  if (page === "login") {
    get("login-form", HTMLFormElement).addEventListener(
      "submit",
      action(button("login"), "Waiting for your passkey…", async () => {
        const username = value("username").toLowerCase();
        const o = await api<{ options: RequestOptionsJSON }>("POST", "/auth/login/options", username ? { username } : {});
        const cred = (await navigator.credentials.get(requestOptions(o.options))) as PublicKeyCredential | null;
        if (!cred) throw new Error("No passkey was chosen.");
        await api("POST", "/auth/login/verify", { credential: assertionJSON(cred) });
        say("Signed in.");
        location.assign(next);
      }),
    );
  }

  if (page === "recovery") {
    // Absent when the page is reloaded during recovery: enrolment is shown straight away.
    const recoveryForm = find("recovery-form", HTMLFormElement);
    const enrol = get("enrol", HTMLElement);
    recoveryForm?.addEventListener(
      "submit",
      action(button("recover"), "Checking the code…", async () => {
        await api("POST", "/auth/recovery", { username: value("username").toLowerCase(), code: value("code") });
        recoveryForm.hidden = true;
        enrol.hidden = false;
        say("Code accepted. Now create a new passkey.");
        button("add-passkey").focus();
      }),
    );
    button("add-passkey").addEventListener(
      "click",
      action(button("add-passkey"), "Waiting for your passkey…", async () => {
        await addPasskey(false);
        say("New passkey saved.");
        location.assign(next);
      }),
    );
  }

  if (page === "account") {
    button("add-passkey").addEventListener(
      "click",
      action(button("add-passkey"), "Waiting for your new passkey…", async () => {
        await addPasskey(true);
        location.reload();
      }),
    );
    get("passkeys", HTMLElement).addEventListener("click", (ev) => {
      const remove = ev.target instanceof Element ? ev.target.closest<HTMLButtonElement>("button[data-id]") : null;
      if (!remove) return;
      action(remove, "Removing the passkey…", async () => {
        const stepUp = await confirmWithPasskey("passkey.remove");
        await api("DELETE", `/auth/passkeys/${encodeURIComponent(remove.getAttribute("data-id") ?? "")}`, { stepUp });
        location.reload();
      })(ev);
    });
    button("regenerate").addEventListener(
      "click",
      action(button("regenerate"), "Making new recovery codes…", async () => {
        const stepUp = await confirmWithPasskey("recovery-codes.regenerate");
        const done = await api<RecoveryCodes>("POST", "/auth/recovery-codes", { stepUp });
        showCodes(done.recoveryCodes);
        say("New recovery codes below; the old ones no longer work. Save these now: they are shown only once.");
      }),
    );
    button("logout").addEventListener(
      "click",
      action(button("logout"), "Signing out…", async () => {
        await api("POST", "/auth/logout");
        location.assign("/login");
      }),
    );
  }
})();

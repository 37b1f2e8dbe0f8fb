/**
 * The script of the sign-in and account pages, served as /_hv/assets/auth.js (a classic script:
 * no imports or exports, so the compiled file runs as it is under script-src 'self').
 * body[data-page] says which page this is; body[data-next] where to go after signing in.
 * WebAuthn's binary fields are converted to and from base64url by hand (WebAuthn L3 §5.1, the
 * JSON encodings @simplewebauthn expects).
 */
(() => {
  // These pages register no service worker, and sandboxes on this origin may not (the proxy
  // refuses their scripts): any registration here is a stray one from before that, which would
  // see every page of the origin, these among them: it goes as soon as one of these pages loads.
  void navigator.serviceWorker?.getRegistrations().then((found) => Promise.all(found.map((r) => r.unregister())));

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

  interface ErrorJSON {
    code?: string;
    message?: string;
    details?: { issues?: { path: string; message: string }[] };
  }

  class RequestError extends Error {
    constructor(
      message: string,
      readonly status: number,
      readonly error: ErrorJSON,
    ) {
      super(message);
    }
  }

  /** A refusal that belongs to one field: shown under it, not only in the status line. */
  class FieldError extends Error {
    constructor(
      readonly field: string,
      message: string,
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

  /** The status line at the top of the page, or one next to the action (a sandbox's). */
  function say(text: string, isError?: boolean, where: HTMLElement = statusEl): void {
    where.textContent = text;
    where.className = isError ? "status error" : "status";
  }

  /** Ties a message to its field (aria-invalid, and the message element its aria-describedby names). */
  function fieldError(field: string, message: string): void {
    const input = get(field, HTMLInputElement);
    get(`${field}-error`, HTMLElement).textContent = message;
    input.setAttribute("aria-invalid", "true");
  }

  function clearFieldErrors(form: HTMLElement): void {
    form.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
    form.querySelectorAll(".field-error").forEach((el) => (el.textContent = ""));
  }

  const USER_NAME = /^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$/;

  /** The user name field's own check, in the words a person reads, before anything is sent. */
  function checkUserName(name: string, required: boolean): void {
    if (!name) {
      if (required) throw new FieldError("username", "Choose a user name.");
      return;
    }
    if (!USER_NAME.test(name)) {
      throw new FieldError("username", "Use 1 to 32 lower-case letters (a–z), digits and dashes, with a letter or digit first and last.");
    }
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
    const data = (await res.json().catch(() => null)) as { error?: ErrorJSON } | null;
    if (!res.ok) {
      const error = (data && data.error) || {};
      throw new RequestError(error.message || `The request failed (HTTP ${res.status}).`, res.status, error);
    }
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

  /** A server's message as a sentence: it starts lower-case and ends bare, to read well inside logs. */
  function sentence(text: string): string {
    const s = text.charAt(0).toUpperCase() + text.slice(1);
    return /[.!?]$/.test(s) ? s : `${s}.`;
  }

  function explain(err: unknown): string {
    const e = err as { name?: unknown; message?: unknown } | null | undefined;
    if (e && e.name === "NotAllowedError") return "No passkey was used: the prompt was closed, or it timed out. Try again.";
    if (e && e.name === "InvalidStateError") return "This authenticator already holds a passkey for this account.";
    if (e && e.name === "SecurityError") return "Passkeys are not available here: open the hypervisor at its public address.";
    return sentence(e && e.message ? String(e.message) : String(err));
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

  /**
   * Runs an action from a button or form: busy while it runs; a field's error goes under the
   * field (and focus to it), any other to the status line (`where`: the top one by default).
   */
  function action(
    button: HTMLButtonElement,
    waiting: string,
    run: () => Promise<unknown>,
    o: { where?: HTMLElement; explainError?: (err: unknown) => string; passkeys?: boolean; after?: () => void } = {},
  ): (ev?: Event) => void {
    const where = o.where ?? statusEl;
    return (ev) => {
      if (ev) ev.preventDefault();
      if (button.disabled || (o.passkeys !== false && !supported())) return;
      const form = button.form;
      if (form) clearFieldErrors(form);
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      say(waiting, false, where);
      void (async () => {
        try {
          await run();
        } catch (err) {
          if (err instanceof FieldError) {
            // Said once, under the field the focus moves to (which reads it out): not in the status line too.
            fieldError(err.field, err.message);
            say("", false, where);
            get(err.field, HTMLInputElement).focus();
          } else {
            say((o.explainError ?? explain)(err), true, where);
          }
        }
        button.disabled = false;
        button.removeAttribute("aria-busy");
        o.after?.();
      })();
    };
  }

  /** Asks before an irreversible change, in the page's own dialog; resolves true for the confirming button. */
  function confirmFirst(title: string, text: string, ok: string): Promise<boolean> {
    const dialog = get("confirm-dialog", HTMLDialogElement);
    get("confirm-title", HTMLElement).textContent = title;
    get("confirm-text", HTMLElement).textContent = text;
    get("confirm-ok", HTMLButtonElement).textContent = ok;
    dialog.returnValue = "";
    dialog.showModal();
    get("confirm-cancel", HTMLButtonElement).focus();
    return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
  }

  function copyCodes(): void {
    const codes = Array.from(get("recovery-codes", HTMLElement).querySelectorAll("code")).map((c) => c.textContent || "");
    const copied = navigator.clipboard ? navigator.clipboard.writeText(codes.join("\n")) : Promise.reject(new Error("no clipboard"));
    copied.then(
      () => say("The codes are copied. Paste them into your password manager now."),
      () => {
        // No clipboard access: select the list, so the user can copy it by hand.
        const range = document.createRange();
        range.selectNodeContents(get("recovery-codes", HTMLElement));
        const selection = window.getSelection();
        selection?.removeAllRanges();
        selection?.addRange(range);
        say("Copying is not allowed here: the codes are selected, copy them with your keyboard or menu.", true);
      },
    );
  }
  find("copy-codes", HTMLButtonElement)?.addEventListener("click", copyCodes);

  /** A server's refusal of a user name (or of the invite code), under the field that holds it. */
  function userNameRefusal(err: unknown): never {
    if (err instanceof RequestError) {
      if (err.error.code === "conflict") throw new FieldError("username", "This user name is taken. Choose another one, or sign in.");
      const issue = err.error.details?.issues?.find((i) => i.path === "username");
      if (issue) throw new FieldError("username", "Use 1 to 32 lower-case letters (a–z), digits and dashes, with a letter or digit first and last.");
      if (err.error.code === "forbidden" && /invite/i.test(err.message) && find("invite", HTMLInputElement))
        throw new FieldError("invite", sentence(err.message));
    }
    throw err;
  }

  function value(id: string): string {
    const el = find(id, HTMLInputElement);
    return el ? el.value.trim() : "";
  }

  const button = (id: string) => get(id, HTMLButtonElement);

  interface SandboxView {
    role: string;
    state: string;
    generation: number;
    healthy: boolean | null;
    idle: string;
    /** Stopped over its disk: why (pages.ts overDiskNote writes the same words). */
    overDisk?: string;
  }

  const HEALTH = (healthy: boolean | null) => (healthy === null ? "not running" : healthy ? "healthy" : "not answering its health check");
  /** The states in which each action is offered: the account page's own list (pages.ts OFFERED). */
  const OFFERED: Record<string, string[]> = {
    start: ["stopped", "not started"],
    restart: ["running", "frozen"],
    stop: ["running", "frozen"],
  };

  const offers = (b: HTMLButtonElement, state: string) => (OFFERED[b.getAttribute("data-action") || ""] || []).includes(state);

  /** The sandbox as the server reports it, and the actions that state offers. */
  function showSandbox(card: HTMLElement, s: SandboxView): void {
    card.setAttribute("data-state", s.state);
    get(`${s.role}-state`, HTMLElement).textContent = s.state;
    get(`${s.role}-generation`, HTMLElement).textContent = `#${s.generation}`;
    get(`${s.role}-health`, HTMLElement).textContent =
      s.state === "frozen" ? "frozen while idle: your next request wakes it in milliseconds, with everything it held" : HEALTH(s.healthy);
    get(`${s.role}-idle`, HTMLElement).textContent = s.idle;
    const overDisk = get(`${s.role}-over-disk`, HTMLElement);
    overDisk.textContent = s.overDisk ? `Stopped: its data is over its disk. ${s.overDisk}` : "";
    overDisk.hidden = !s.overDisk;
    card.querySelectorAll<HTMLButtonElement>("button[data-action]").forEach((b) => (b.disabled = !offers(b, s.state)));
  }

  /** Sign-in without a passkey used: say what may have happened, as the browser does not tell which. */
  function explainLogin(err: unknown): string {
    const e = err as { name?: unknown } | null;
    if (!(e && e.name === "NotAllowedError")) return explain(err);
    const username = value("username").toLowerCase();
    return username
      ? `No passkey for “${username}” was used. This device may hold none for that name (check its spelling, or use the device you created the passkey on), or the prompt was closed. Lost your passkeys? Use a recovery code.`
      : "No passkey for this site was used. This device may hold none (type your user name, or use the device you created the passkey on), or the prompt was closed. Lost your passkeys? Use a recovery code.";
  }

  /**
   * The starting page: asks /_hv/sandboxes for the sandbox's state every second, shows it, and
   * reloads once the sandbox is healthy; a failed start is said in words, with a way to retry.
   */
  function followStart(): void {
    const user = body.getAttribute("data-user") || "";
    const role = body.getAttribute("data-role") || "";
    const since = body.getAttribute("data-since") || "";
    const began = Date.now();
    let lastPhase = "";
    const poll = async (): Promise<void> => {
      try {
        const s = await api<{
          sandbox: SandboxView;
          progress?: StartReport;
          failure?: { code: string; message: string };
        }>("GET", `/_hv/sandboxes/${encodeURIComponent(user)}/${role}?since=${encodeURIComponent(since)}`);
        if (s.failure) return startFailed(s.failure.message);
        if (s.sandbox.state === "running" && s.sandbox.healthy) return location.reload();
        // The live status line speaks only when the phase changes; the seconds and attempts tick silently.
        const phase = s.progress ? s.progress.phase : s.sandbox.state;
        if (phase !== lastPhase) say(`The sandbox is ${phase === "running" ? "running, waiting for its health check" : phase}…`);
        lastPhase = phase;
        const seconds = Math.round((s.progress ? s.progress.elapsedMs : Date.now() - began) / 1000);
        const attempts =
          s.progress && s.progress.attempts ? `, ${s.progress.attempts} health check${s.progress.attempts === 1 ? "" : "s"} not answered yet` : "";
        get("start-elapsed", HTMLElement).textContent = `${seconds} s so far${attempts}.`;
        if (s.progress) showSteps(s.progress);
      } catch (err) {
        // Signed out meanwhile: the reload goes to the sign-in page.
        if (err instanceof RequestError && err.status === 401) return location.reload();
        say(`Cannot ask for the sandbox's state: ${explain(err)}`, true);
      }
      setTimeout(() => void poll(), 1000);
    };
    setTimeout(() => void poll(), 500);
  }

  interface StartReport {
    phase: string;
    attempts: number;
    elapsedMs: number;
    steps: { phase: string; atMs: number }[];
    lastAnswer?: string;
  }
  const STEP_NAMES: Record<string, string> = {
    creating: "Making its container",
    starting: "Starting it",
    "waiting for health": "Waiting for it to answer its health check",
  };
  /** Past this, a start is slow enough that what its health check answered helps to understand why. */
  const SLOW_START_MS = 3000;

  /** Each step the runtime took, with when it began; and, once the start is slow, what /health last answered. */
  function showSteps(p: StartReport): void {
    const list = get("start-steps", HTMLElement);
    list.replaceChildren(
      ...p.steps.map((step, i) => {
        const item = document.createElement("li");
        item.textContent = `${STEP_NAMES[step.phase] ?? step.phase} (at ${(step.atMs / 1000).toFixed(1)} s)`;
        if (i === p.steps.length - 1) item.setAttribute("aria-current", "step");
        return item;
      }),
    );
    const health = get("start-health", HTMLElement);
    const slow = p.lastAnswer !== undefined && p.elapsedMs >= SLOW_START_MS;
    health.textContent = slow ? `Its health check (GET /health) last answered: ${p.lastAnswer}` : "";
    health.hidden = !slow;
  }

  function startFailed(message: string): void {
    get("start-title", HTMLElement).textContent = "Your sandbox did not start";
    get("start-detail", HTMLElement).textContent = "It could not be started, or it did not become healthy in time.";
    get("start-progress", HTMLElement).hidden = true;
    get("start-elapsed", HTMLElement).hidden = true;
    get("start-steps", HTMLElement).hidden = true;
    // The failure's message says what /health last answered.
    get("start-health", HTMLElement).hidden = true;
    const failure = get("start-failure", HTMLElement);
    failure.textContent = sentence(message);
    failure.hidden = false;
    get("retry", HTMLElement).hidden = false;
    say("The sandbox did not start.", true);
    get("retry", HTMLElement).focus();
  }

  if (page === "register") {
    // Absent when registration is closed: the page then only says so.
    const registerForm = find("register-form", HTMLFormElement);
    registerForm?.addEventListener(
      "submit",
      action(button("register"), "Waiting for your passkey…", async () => {
        const payload: { username: string; invite?: string } = { username: value("username").toLowerCase() };
        checkUserName(payload.username, true);
        if (find("invite", HTMLInputElement) && !value("invite")) throw new FieldError("invite", "Enter your invite code.");
        if (value("invite")) payload.invite = value("invite");
        const credential = await createPasskey("/auth/register/options", payload).catch(userNameRefusal);
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
      action(
        button("login"),
        "Waiting for your passkey…",
        async () => {
          const username = value("username").toLowerCase();
          checkUserName(username, false);
          const o = await api<{ options: RequestOptionsJSON }>("POST", "/auth/login/options", username ? { username } : {});
          const cred = (await navigator.credentials.get(requestOptions(o.options))) as PublicKeyCredential | null;
          if (!cred) throw new Error("No passkey was chosen.");
          await api("POST", "/auth/login/verify", { credential: assertionJSON(cred) });
          say("Signed in.");
          location.assign(next);
        },
        { explainError: explainLogin },
      ),
    );
  }

  if (page === "recovery") {
    // Absent when the page is reloaded during recovery: enrolment is shown straight away.
    const recoveryForm = find("recovery-form", HTMLFormElement);
    const enrol = get("enrol", HTMLElement);
    recoveryForm?.addEventListener(
      "submit",
      action(button("recover"), "Checking the code…", async () => {
        const username = value("username").toLowerCase();
        if (!username) throw new FieldError("username", "Enter your user name.");
        checkUserName(username, true);
        if (!value("code")) throw new FieldError("code", "Enter one of your recovery codes.");
        await api("POST", "/auth/recovery", { username, code: value("code") });
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
    const user = body.getAttribute("data-user") || "";
    button("add-passkey").addEventListener(
      "click",
      action(button("add-passkey"), "Waiting for your new passkey…", async () => {
        await addPasskey(true);
        location.reload();
      }),
    );
    get("passkeys", HTMLElement).addEventListener("click", (ev) => {
      const target = ev.target instanceof Element ? ev.target : null;
      const remove = target && target.closest<HTMLButtonElement>("button[data-remove]");
      const rename = target && target.closest<HTMLButtonElement>("button[data-rename]");
      if (remove) {
        const name = remove.getAttribute("data-name") || "this passkey";
        action(remove, "Confirm the removal first…", async () => {
          const sure = await confirmFirst(
            `Remove ${name}?`,
            "It will no longer sign you in, and every other browser signed in as you is signed out.",
            "Remove passkey",
          );
          if (!sure) return say("Nothing was removed.");
          const stepUp = await confirmWithPasskey("passkey.remove");
          await api("DELETE", `/auth/passkeys/${encodeURIComponent(remove.getAttribute("data-remove") || "")}`, { stepUp });
          location.reload();
        })(ev);
      }
      if (rename) renamePasskey(rename);
    });

    const renameDialog = get("rename-dialog", HTMLDialogElement);
    const renameInput = get("rename-name", HTMLInputElement);
    let renaming: HTMLButtonElement | null = null;
    function renamePasskey(from: HTMLButtonElement): void {
      renaming = from;
      clearFieldErrors(renameDialog);
      renameInput.value = from.getAttribute("data-name") || "";
      renameDialog.showModal();
      renameInput.select();
    }
    get("rename-form", HTMLFormElement).addEventListener("submit", (ev) => {
      const submitter = (ev as SubmitEvent).submitter;
      if (!(submitter instanceof HTMLButtonElement) || submitter.value !== "ok" || !renaming) return;
      // The dialog stays open until the name is saved, or its message says why it was not.
      ev.preventDefault();
      const id = renaming.getAttribute("data-rename") || "";
      action(
        submitter,
        "Saving the name…",
        async () => {
          const name = renameInput.value.trim();
          if (!name) throw new FieldError("rename-name", "Give the passkey a name.");
          await api("PATCH", `/auth/passkeys/${encodeURIComponent(id)}`, { name });
          location.reload();
        },
        { passkeys: false },
      )();
    });

    // The user's own keys for egress routes: saved and removed each after a step-up; the page
    // then shows only the last four characters the server answers.
    const egressMessage = find("egress-message", HTMLElement) ?? statusEl;
    for (const form of Array.from(document.querySelectorAll<HTMLFormElement>("form[data-egress-form]"))) {
      const route = form.getAttribute("data-egress-form") || "";
      const input = get(`egress-key-input-${route}`, HTMLInputElement);
      const save = form.querySelector<HTMLButtonElement>("button[type=submit]");
      if (save)
        form.addEventListener(
          "submit",
          action(
            save,
            "Confirm with your passkey to save the key…",
            async () => {
              const key = input.value.trim();
              if (key.length < 8) throw new FieldError(input.id, "Paste your key (at least 8 characters).");
              const stepUp = await confirmWithPasskey("egress-key.set");
              await api("PUT", `/auth/egress-keys/${encodeURIComponent(route)}`, { key, stepUp });
              input.value = "";
              location.reload();
            },
            { where: egressMessage },
          ),
        );
      const remove = form.querySelector<HTMLButtonElement>("button[data-egress-remove]");
      if (remove)
        remove.addEventListener(
          "click",
          action(
            remove,
            "Confirm the removal first…",
            async () => {
              const sure = await confirmFirst(
                `Remove your key for ${route}?`,
                "Your sandboxes' calls to it use the operator's key again, if there is one.",
                "Remove key",
              );
              if (!sure) return say("Your key is unchanged.", false, egressMessage);
              const stepUp = await confirmWithPasskey("egress-key.remove");
              await api("DELETE", `/auth/egress-keys/${encodeURIComponent(route)}`, { stepUp });
              location.reload();
            },
            { where: egressMessage },
          ),
        );
    }

    button("regenerate").addEventListener(
      "click",
      action(button("regenerate"), "Confirm the new codes first…", async () => {
        const sure = await confirmFirst("Make new recovery codes?", "Your current codes stop working as soon as the new ones are made.", "Make new codes");
        if (!sure) return say("Your recovery codes are unchanged.");
        const stepUp = await confirmWithPasskey("recovery-codes.regenerate");
        const done = await api<RecoveryCodes>("POST", "/auth/recovery-codes", { stepUp });
        showCodes(done.recoveryCodes);
        say("New recovery codes below; the old ones no longer work. Save these now: they are shown only once.");
        get("copy-codes", HTMLButtonElement).focus();
      }),
    );
    button("logout").addEventListener(
      "click",
      action(
        button("logout"),
        "Signing out…",
        async () => {
          await api("POST", "/auth/logout");
          location.assign("/login");
        },
        { passkeys: false },
      ),
    );

    // Your data: each action says what happens to which data, then asks for a passkey made for it.
    const dataMessage = find("data-message", HTMLElement);
    document.querySelectorAll<HTMLButtonElement>("button[data-data-path]").forEach((b) => {
      const where = dataMessage ?? statusEl;
      b.addEventListener(
        "click",
        action(
          b,
          "Confirm first…",
          async () => {
            const sure = await confirmFirst(
              b.getAttribute("data-confirm-title") || "",
              b.getAttribute("data-confirm-text") || "",
              b.getAttribute("data-confirm-ok") || "OK",
            );
            if (!sure) return say("Nothing was changed.", false, where);
            const stepUp = await confirmWithPasskey(b.getAttribute("data-step-up") || "");
            say("Working on it: your requests wait meanwhile…", false, where);
            await api(b.getAttribute("data-data-method") || "POST", b.getAttribute("data-data-path") || "", { stepUp });
            say("Done.", false, where);
            location.reload();
          },
          { where },
        ),
      );
    });

    document.querySelectorAll<HTMLElement>("article.sandbox").forEach((card) => {
      const role = card.getAttribute("data-role") || "";
      const message = get(`${role}-message`, HTMLElement);
      const logs = get(`${role}-logs`, HTMLElement);
      const path = `/_hv/sandboxes/${encodeURIComponent(user)}/${role}`;
      const refreshLogs = async () => {
        const got = await api<{ lines: string[] }>("GET", `${path}/logs`);
        logs.textContent = got.lines.length ? got.lines.join("\n") : "No log yet: this sandbox has not printed anything, or was never started.";
      };
      const logsButton = card.querySelector<HTMLButtonElement>("button[data-logs]");
      if (logsButton)
        logsButton.addEventListener(
          "click",
          action(
            logsButton,
            `Reading the ${role} log…`,
            async () => {
              await refreshLogs();
              say(`The ${role} log, as of now.`, false, message);
            },
            { where: message, passkeys: false },
          ),
        );
      const actions = Array.from(card.querySelectorAll<HTMLButtonElement>("button[data-action]"));
      /**
       * What the server reports after an action (or after its failure): never a guess from what
       * was clicked. Shown as soon as it is known, and again once action() has re-enabled the
       * clicked button, which the new state may not offer.
       */
      let reported: SandboxView | undefined;
      const settle = () => {
        if (reported) showSandbox(card, reported);
        else actions.forEach((b) => (b.disabled = !offers(b, card.getAttribute("data-state") || "")));
        reported = undefined;
      };
      actions.forEach((b) => {
        const act = b.getAttribute("data-action") || "";
        const doing = act === "stop" ? "Stopping" : act === "restart" ? "Restarting" : "Starting";
        const run = action(
          b,
          `${doing} ${role}…`,
          async () => {
            try {
              reported = (await api<{ sandbox: SandboxView }>("POST", `${path}/${act}`)).sandbox;
              showSandbox(card, reported);
            } catch (err) {
              reported = await api<{ sandbox: SandboxView }>("GET", path).then(
                (r) => r.sandbox,
                () => undefined,
              );
              throw err;
            }
            say(
              `${role}: ${reported.state}${reported.healthy === null ? "" : reported.healthy ? ", healthy" : ", not answering its health check"}.`,
              false,
              message,
            );
            // The log shows what the action did; the result above stands even if it cannot be read.
            await refreshLogs().catch(() => undefined);
          },
          { where: message, passkeys: false, after: settle },
        );
        b.addEventListener("click", (ev) => {
          if (b.disabled) return;
          // One action at a time per sandbox: its other buttons wait for the outcome too.
          actions.forEach((other) => other !== b && (other.disabled = true));
          run(ev);
        });
      });

      // Opened while it starts (a visit to it began the start): follow until it settles.
      const follow = async (): Promise<void> => {
        if (card.getAttribute("data-state") !== "starting") return;
        await new Promise((resolve) => setTimeout(resolve, 2000));
        const now = await api<{ sandbox: SandboxView }>("GET", path).catch(() => undefined);
        if (now) showSandbox(card, now.sandbox);
        return follow();
      };
      void follow();
    });
  }

  if (page === "starting") followStart();
})();

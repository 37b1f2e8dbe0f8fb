import type { Context, Hono } from "hono";
import { LAUNCH_PATH, launchPath } from "../../proxy/sandbox-origins.js";
import { passkeyView } from "../auth/auth-routes.js";
import { safeNextPath } from "../auth/request-context.js";
import type { Config } from "../config.js";
import { HypervisorError } from "../errors.js";
import type { AppEnv } from "../http/error-handling.js";
import type { Services } from "../services.js";
import { assets } from "./assets.js";
import type { BrowserPages } from "./browser-pages.js";
import { dataSection } from "./data-section.js";
import { html, layout, securityHeaders, type Html } from "./html.js";
import { accountSandboxes, lastLogLines, LOG_TAIL_MAX, registerAccountSandboxRoutes, type AccountSandbox } from "./sandbox-routes.js";

const ACCOUNT_PATH = "/_hv/account";

function loginUrl(next: string): string {
  return next === "/" ? "/login" : `/login?next=${encodeURIComponent(next)}`;
}

function withNext(path: string, next: string): string {
  return next === "/" ? path : `${path}?next=${encodeURIComponent(next)}`;
}

const recoveryCodesSection = (continueTo: string | undefined): Html => html`
<section id="codes" hidden aria-labelledby="codes-title">
  <h2 id="codes-title">Your recovery codes</h2>
  <p>Each code signs you in once if you lose your passkeys. Write them down or store them in a
  password manager now: they will not be shown again.</p>
  <ol id="recovery-codes"></ol>
  <button id="copy-codes" type="button" class="secondary">Copy the codes</button>
  ${continueTo === undefined ? "" : html`<a id="continue" class="button" href="${continueTo}">Continue</a>`}
</section>`;

/** A field's message, tied to it by aria-describedby; the script fills it and sets aria-invalid. */
const fieldError = (id: string): Html => html`<p id="${id}-error" class="field-error"></p>`;

/**
 * The user's own keys for egress routes that take them (DESIGN §5b) and the user's egress use
 * today. A stored key shows as its last four characters; the page never holds more of it.
 */
function egressSection(egress: Services["egressCredentials"], user: string): Html {
  const routes = egress.routes.views().filter((r) => r.userKeys);
  const stored = new Map(egress.userKeys.list(user).map((k) => [k.route, k]));
  const usage = egress.budgets.usage(user);
  return html`
<section aria-labelledby="egress-title" id="egress">
  <h2 id="egress-title">Keys for outside services</h2>
  <p class="hint">Your sandboxes call these services through the hypervisor, which adds the key: the key never
  enters a sandbox. Store your own key to be billed on your account instead of the operator's.</p>
  ${
    !egress.userKeys.enabled
      ? html`<p id="egress-keys-off">Your own keys are off on this hypervisor: its operator has not set the key that encrypts them (the egress-secrets-key credential).</p>`
      : routes.length === 0
        ? html`<p id="egress-keys-none">No service on this hypervisor takes your own key.</p>`
        : html`<ul id="egress-keys">
    ${routes.map((r) => {
      const key = stored.get(r.name);
      return html`<li data-egress-route="${r.name}">
      <span><strong>${r.name}</strong> <span class="hint">${r.upstream}</span><br>
      <span id="egress-key-${r.name}">${key ? `your key ending in ${key.last4}` : "the operator's key"}</span></span>
      <form class="row-actions" data-egress-form="${r.name}" novalidate>
        <label for="egress-key-input-${r.name}">Your key for ${r.name}</label>
        <input id="egress-key-input-${r.name}" type="password" autocomplete="off" spellcheck="false" maxlength="4096" aria-describedby="egress-key-input-${r.name}-error">
        ${fieldError(`egress-key-input-${r.name}`)}
        <button type="submit" class="secondary">Save key</button>
        ${key ? html`<button type="button" class="secondary" data-egress-remove="${r.name}" aria-label="Remove your key for ${r.name}">Remove key</button>` : ""}
      </form>
    </li>`;
    })}
  </ul>`
  }
  <p id="egress-message" class="status" role="status" aria-live="polite"></p>
  <h3 id="egress-usage-title">Your use today</h3>
  ${
    usage.length === 0
      ? html`<p id="egress-usage-none">Your sandboxes have not called out today.</p>`
      : html`<table id="egress-usage" aria-labelledby="egress-usage-title">
    <thead><tr><th>Service</th><th>Requests today</th><th>Bytes today</th><th>This minute</th></tr></thead>
    <tbody>${usage.map((u) => html`<tr><td>${u.target}</td><td>${String(u.dayRequests)}</td><td>${String(u.dayBytes)}</td><td>${String(u.minuteRequests)}</td></tr>`)}</tbody>
  </table>`
  }
</section>`;
}

const HEALTH: Record<string, string> = { true: "healthy", false: "not answering its health check", null: "not running" };
const FROZEN = "frozen while idle: your next request wakes it in milliseconds, with everything it held";
/**
 * The states in which each action is offered (the page script keeps the same list): a button
 * that would do nothing, or race a start under way, is disabled.
 */
const OFFERED: Record<"start" | "restart" | "stop", readonly AccountSandbox["state"][]> = {
  start: ["stopped", "not started"],
  restart: ["running", "frozen"],
  stop: ["running", "frozen"],
};

/** The browser script writes the same words when the state it is told changes (auth.ts showSandbox). */
const overDiskNote = (reason: string) => `Stopped: its data is over its disk. ${reason}`;

const actionButton = (s: AccountSandbox, act: keyof typeof OFFERED, label: string): Html =>
  html`<button type="button" class="secondary" data-action="${act}" ${OFFERED[act].includes(s.state) ? "" : html`disabled`}>${label} ${s.role}</button>`;

const sandboxCard = (s: AccountSandbox, href: string, logs: string[] | undefined): Html => html`
<article class="sandbox" id="sandbox-${s.role}" data-role="${s.role}" data-state="${s.state}" aria-labelledby="sandbox-${s.role}-title">
  <h3 id="sandbox-${s.role}-title"><a href="${href}">${s.role}</a></h3>
  <dl>
    <dt>State</dt><dd id="${s.role}-state">${s.state}</dd>
    <dt>Generation</dt><dd id="${s.role}-generation">#${s.generation}</dd>
    <dt>Health</dt><dd id="${s.role}-health">${s.state === "frozen" ? FROZEN : HEALTH[String(s.healthy)]}</dd>
    <dt>If idle</dt><dd id="${s.role}-idle">${s.idle}</dd>
  </dl>
  <p id="${s.role}-over-disk" class="error" ${s.overDisk ? "" : html`hidden`}>${s.overDisk ? overDiskNote(s.overDisk) : ""}</p>
  <div class="row-actions">
    ${actionButton(s, "start", "Start")}
    ${actionButton(s, "restart", "Restart")}
    ${actionButton(s, "stop", "Stop")}
  </div>
  <p id="${s.role}-message" class="status" role="status" aria-live="polite"></p>
  <h4 id="${s.role}-logs-title">Last log lines <span class="hint">(newest last)</span></h4>
  <pre id="${s.role}-logs" tabindex="0" aria-labelledby="${s.role}-logs-title">${
    logs === undefined
      ? "The log cannot be read right now."
      : logs.length
        ? logs.join("\n")
        : "No log yet: this sandbox has not printed anything, or was never started."
  }</pre>
  <button type="button" class="secondary" data-logs="${s.role}">Refresh the log</button>
</article>`;

export type PagesDeps = Pick<
  Services,
  "sessions" | "auth" | "manager" | "sandboxStatus" | "routing" | "audit" | "sandboxOrigins" | "sandboxGrants" | "egressCredentials" | "snapshots"
> & {
  config: Pick<Config, "registration" | "publicOrigin" | "trustedProxies">;
  pages: BrowserPages;
};

/** The sign-in pages and the account page (DESIGN §4 reserved paths), with their assets. */
export function registerPages(app: Hono<AppEnv>, deps: PagesDeps): void {
  const { sessions, auth, config, sandboxOrigins, sandboxGrants } = deps;
  const pages = securityHeaders();
  app.use("/login", pages);
  app.use("/register", pages);
  app.use("/recovery", pages);
  app.use("/_hv/account", pages);
  app.use("/_hv/assets/*", pages);
  registerAccountSandboxRoutes(app, deps);

  const next = (c: Context<AppEnv>, fallback = "/") => {
    const raw = c.req.query("next");
    return raw === undefined ? fallback : safeNextPath(raw);
  };

  app.get("/_hv/assets/:name", (c) => {
    const asset = assets[c.req.param("name")];
    if (!asset) return c.text("not found", 404);
    c.header("ETag", asset.etag);
    // Revalidate every time: a deploy changes the script, and a 304 costs next to nothing.
    c.header("Cache-Control", "no-cache");
    if (c.req.header("if-none-match") === asset.etag) return c.body(null, 304);
    return c.body(asset.body, 200, { "Content-Type": asset.type });
  });

  /**
   * `/_hv/launch?role=live|dev[&next=/path]`: the way into a sandbox. With sandbox origins, a
   * signed-in browser gets a one-time code for its own sandbox origin, which that origin turns
   * into its hv_sandbox cookie (DESIGN §4); in path mode it is just the sandbox's path here.
   */
  app.get(LAUNCH_PATH, (c) => {
    const role = c.req.query("role");
    if (role !== "live" && role !== "dev") throw new HypervisorError("validation_failed", "role: live or dev");
    const to = next(c);
    c.header("Cache-Control", "no-store");
    c.header("Referrer-Policy", "no-referrer");
    if (!sandboxOrigins) return c.redirect(role === "dev" ? `/dev${to}` : to, 303);
    const launch = sandboxGrants.issueLaunch(c.req.header("cookie"), role, to);
    if (!launch) return c.redirect(loginUrl(launchPath(role, to)), 303);
    return c.redirect(`${sandboxOrigins.originOf({ user: launch.user, role })}${LAUNCH_PATH}?code=${launch.code}`, 303);
  });

  app.get("/login", (c) => {
    const to = next(c);
    // Signed out by the operator: said here, where the browser lands, rather than a bare sign-in form.
    const disabled = sessions.whyEnded(c.req.header("cookie")) === "disabled";
    return c.html(
      layout({
        title: "Sign in",
        page: "login",
        next: to,
        body: html`
<h1>Sign in</h1>
${
  disabled
    ? html`<p id="signed-out-why" class="error">You were signed out because the operator of this hypervisor disabled your account.
  Your sandboxes and data are kept; ask the operator to enable the account again.</p>`
    : ""
}
<p id="about">This hypervisor runs your own web app in two sandboxes: <strong>live</strong>, the one you use, and
<strong>dev</strong>, where you try the next version. You sign in with a passkey: a key kept by your device or
password manager and unlocked with your fingerprint, face, PIN or security key, instead of a password. There is
nothing to type or remember, and a fake site cannot use it.</p>
<form id="login-form" novalidate>
  <label for="username">User name <span class="hint">(optional: leave empty to choose a passkey)</span></label>
  <input id="username" name="username" autocomplete="username webauthn" autocapitalize="none" spellcheck="false" maxlength="32" aria-describedby="username-error">
  ${fieldError("username")}
  <button id="login" type="submit">Sign in with a passkey</button>
</form>
<nav aria-label="Other options">
  <p><a href="${withNext("/register", to)}">Create an account</a> <a href="${withNext("/recovery", to)}">Lost your passkey?</a></p>
</nav>`,
      }),
    );
  });

  app.get("/register", (c) => {
    const to = next(c);
    const mode = config.registration;
    const invite = c.req.query("invite") ?? "";
    const form =
      mode === "closed"
        ? html`<p>Registration is closed on this hypervisor. Ask its operator for an account.</p>`
        : html`
<form id="register-form" novalidate>
  <label for="username">User name</label>
  <input id="username" name="username" required autocomplete="username" autocapitalize="none" spellcheck="false"
    maxlength="32" pattern="[a-z0-9]([a-z0-9\\-]{0,30}[a-z0-9])?" aria-describedby="username-hint username-error">
  <p id="username-hint" class="hint">1 to 32 lower-case letters, digits and dashes (not first or last). It names your sandboxes.</p>
  ${fieldError("username")}
  ${
    mode === "invite"
      ? html`<label for="invite">Invite code</label>
  <input id="invite" name="invite" required autocomplete="off" spellcheck="false" maxlength="128" value="${invite}" aria-describedby="invite-error">
  ${fieldError("invite")}`
      : ""
  }
  <button id="register" type="submit">Create account with a passkey</button>
</form>`;
    return c.html(
      layout({
        title: "Create an account",
        page: "register",
        next: to,
        body: html`
<h1>Create an account</h1>
${form}
${recoveryCodesSection(to)}
<nav aria-label="Other options"><p><a href="${withNext("/login", to)}">Already have an account? Sign in</a></p></nav>`,
      }),
    );
  });

  app.get("/recovery", (c) => {
    const to = next(c, ACCOUNT_PATH);
    // Back on this page with a recovery session (a reload): go straight to the enrolment step.
    const recovering = sessions.authenticate(c.req.header("cookie"))?.scope === "recovery";
    return c.html(
      layout({
        title: "Recover your account",
        page: "recovery",
        next: to,
        body: html`
<h1>Recover your account</h1>
${
  recovering
    ? ""
    : html`<form id="recovery-form" novalidate>
  <p>Enter one of the recovery codes you saved when you signed up. Each code works once.</p>
  <label for="username">User name</label>
  <input id="username" name="username" required autocomplete="username" autocapitalize="none" spellcheck="false" maxlength="32" aria-describedby="username-error">
  ${fieldError("username")}
  <label for="code">Recovery code</label>
  <input id="code" name="code" required autocomplete="one-time-code" autocapitalize="none" spellcheck="false" maxlength="64" aria-describedby="code-error">
  ${fieldError("code")}
  <button id="recover" type="submit">Use recovery code</button>
</form>`
}
<section id="enrol" ${recovering ? "" : html`hidden`} aria-labelledby="enrol-title">
  <h2 id="enrol-title">Create a new passkey</h2>
  <p>Your recovery code was accepted. Create a passkey on this device to finish signing in.</p>
  <button id="add-passkey" type="button">Create a new passkey</button>
</section>
<nav aria-label="Other options"><p><a href="${withNext("/login", to === ACCOUNT_PATH ? "/" : to)}">Sign in with a passkey instead</a></p></nav>`,
      }),
    );
  });

  app.get(ACCOUNT_PATH, async (c) => {
    const session = sessions.authenticate(c.req.header("cookie"));
    if (session?.scope !== "full") return c.redirect(loginUrl(ACCOUNT_PATH), 303);
    const user = session.user;
    const passkeys = auth.passkeys.list(user).map(passkeyView);
    const codesLeft = auth.recoveryCodes.remaining(user);
    // The runtime may be down: the page still lets the user manage passkeys and sign out.
    const sandboxes = await accountSandboxes(deps, user).catch(() => undefined);
    const logs = Object.fromEntries(
      await Promise.all(
        (["live", "dev"] as const).map(async (role) => [role, await lastLogLines(deps.manager, user, role, LOG_TAIL_MAX).catch(() => undefined)] as const),
      ),
    );
    const data = sandboxes
      ? dataSection(user, deps.snapshots.list(user), {
          live: { slot: deps.routing.slotOf(user, "live"), generation: deps.routing.generationOf(user, "live") },
          dev: { slot: deps.routing.slotOf(user, "dev"), generation: deps.routing.generationOf(user, "dev") },
        })
      : "";
    // Path mode links the paths; sandbox origins are reached through their launch link.
    const hrefs = sandboxOrigins ? { live: launchPath("live", "/"), dev: launchPath("dev", "/") } : { live: "/", dev: "/dev/" };
    return c.html(
      layout({
        title: "Your account",
        page: "account",
        data: { user },
        header: html`
<header class="menu">
  <span class="who">Signed in as <strong id="menu-user">${user}</strong></span>
  <nav aria-label="Your sandboxes"><a id="open-live" href="${hrefs.live}">Open live</a><a id="open-dev" href="${hrefs.dev}">Open dev</a></nav>
  <button id="logout" type="button" class="secondary">Sign out</button>
</header>`,
        body: html`
<h1>Your account</h1>
<section aria-labelledby="sandboxes-title">
  <h2 id="sandboxes-title">Your sandboxes</h2>
  <p class="hint" id="data-on-swap">Each sandbox keeps its own data. A swap exchanges live and dev, data included, so after a
  swap your live sandbox shows what dev had, and dev what live had. A promote instead keeps live's data: see Your data below.</p>
  <p class="hint" id="actions-hint">Stop ends a sandbox's processes now, and what they held in memory; its data stays, and
  opening it starts it again. Restart stops it and starts it again at once.</p>
  ${
    sandboxes
      ? sandboxes.map((s) => sandboxCard(s, hrefs[s.role], logs[s.role]))
      : html`<p class="error" id="sandboxes-unavailable">The sandboxes' state cannot be read right now. Reload this page in a moment.</p>`
  }
</section>
${data}
<section aria-labelledby="passkeys-title">
  <h2 id="passkeys-title">Passkeys</h2>
  <ul id="passkeys">
    ${passkeys.map(
      (p) => html`<li>
      <span><strong class="passkey-name">${p.name}</strong><br><span class="hint">added ${p.createdAt.slice(0, 10)}${p.lastUsedAt ? `, last used ${p.lastUsedAt.slice(0, 10)}` : ""}</span></span>
      <span class="row-actions">
        <button type="button" class="secondary" data-rename="${p.id}" data-name="${p.name}" aria-label="Rename ${p.name}">Rename</button>
        ${passkeys.length > 1 ? html`<button type="button" class="secondary" data-remove="${p.id}" data-name="${p.name}" aria-label="Remove ${p.name}">Remove</button>` : ""}
      </span>
    </li>`,
    )}
  </ul>
  <button id="add-passkey" type="button">Add a passkey</button>
</section>
${egressSection(deps.egressCredentials, user)}
<section aria-labelledby="recovery-title">
  <h2 id="recovery-title">Recovery codes</h2>
  <p>${codesLeft} of 10 unused. Making new codes invalidates the old ones.</p>
  <button id="regenerate" type="button" class="secondary">Make new recovery codes</button>
  ${recoveryCodesSection(undefined)}
</section>
<dialog id="confirm-dialog" aria-labelledby="confirm-title" aria-describedby="confirm-text">
  <form method="dialog">
    <h2 id="confirm-title"></h2>
    <p id="confirm-text"></p>
    <button type="submit" value="cancel" class="secondary" id="confirm-cancel">Cancel</button>
    <button type="submit" value="ok" id="confirm-ok"></button>
  </form>
</dialog>
<dialog id="rename-dialog" aria-labelledby="rename-title">
  <form method="dialog" id="rename-form" novalidate>
    <h2 id="rename-title">Rename the passkey</h2>
    <label for="rename-name">New name</label>
    <input id="rename-name" name="name" maxlength="64" autocomplete="off" aria-describedby="rename-name-error">
    ${fieldError("rename-name")}
    <button type="submit" value="cancel" class="secondary" id="rename-cancel">Cancel</button>
    <button type="submit" value="ok" id="rename-save">Save</button>
  </form>
</dialog>`,
      }),
    );
  });
}

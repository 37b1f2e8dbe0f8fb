import { createHash } from "node:crypto";

/**
 * The pages' script and style, served from /_hv/assets/ so the CSP can say script-src 'self'
 * (no inline script). Kept as strings so the build ships them with the code; the browser
 * script is plain ES2017 with no template literals, and converts WebAuthn's binary fields to
 * and from base64url by hand (WebAuthn L3 §5.1, the JSON encodings @simplewebauthn expects).
 */
const script = String.raw`"use strict";
(function () {
  var body = document.body;
  var page = body.getAttribute("data-page");
  var next = body.getAttribute("data-next") || "/";
  var statusEl = document.getElementById("status");

  function say(text, isError) {
    statusEl.textContent = text;
    statusEl.className = isError ? "status error" : "status";
  }

  function toB64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var s = "";
    for (var i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function fromB64url(text) {
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    var bin = atob(b64);
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }

  function api(method, path, payload) {
    var init = { method: method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (payload !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    return fetch(path, init).then(function (res) {
      return res.json().catch(function () { return null; }).then(function (data) {
        if (!res.ok) {
          var err = new Error(data && data.error ? data.error.message : "request failed (HTTP " + res.status + ")");
          err.status = res.status;
          throw err;
        }
        return data;
      });
    });
  }

  function withIds(list) {
    return (list || []).map(function (c) {
      var copy = Object.assign({}, c);
      copy.id = fromB64url(c.id);
      return copy;
    });
  }

  function creationOptions(o) {
    var pk = Object.assign({}, o);
    pk.challenge = fromB64url(o.challenge);
    pk.user = Object.assign({}, o.user, { id: fromB64url(o.user.id) });
    pk.excludeCredentials = withIds(o.excludeCredentials);
    return { publicKey: pk };
  }

  function requestOptions(o) {
    var pk = Object.assign({}, o);
    pk.challenge = fromB64url(o.challenge);
    if (o.allowCredentials) pk.allowCredentials = withIds(o.allowCredentials);
    return { publicKey: pk };
  }

  function common(cred) {
    return {
      id: cred.id,
      rawId: toB64url(cred.rawId),
      type: cred.type,
      authenticatorAttachment: cred.authenticatorAttachment || undefined,
      clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {}
    };
  }

  function attestationJSON(cred) {
    var r = cred.response;
    var json = common(cred);
    json.response = {
      clientDataJSON: toB64url(r.clientDataJSON),
      attestationObject: toB64url(r.attestationObject),
      transports: typeof r.getTransports === "function" ? r.getTransports() : undefined
    };
    return json;
  }

  function assertionJSON(cred) {
    var r = cred.response;
    var json = common(cred);
    json.response = {
      clientDataJSON: toB64url(r.clientDataJSON),
      authenticatorData: toB64url(r.authenticatorData),
      signature: toB64url(r.signature),
      userHandle: r.userHandle && r.userHandle.byteLength ? toB64url(r.userHandle) : undefined
    };
    return json;
  }

  function explain(err) {
    if (err && err.name === "NotAllowedError") return "The passkey prompt was cancelled or timed out. Try again.";
    if (err && err.name === "InvalidStateError") return "This authenticator already holds a passkey for this account.";
    if (err && err.name === "SecurityError") return "Passkeys are not available here: open the hypervisor at its public address.";
    return err && err.message ? err.message : String(err);
  }

  function supported() {
    if (window.PublicKeyCredential && navigator.credentials) return true;
    say("This browser does not support passkeys.", true);
    return false;
  }

  function createPasskey(optionsPath, optionsBody) {
    return api("POST", optionsPath, optionsBody)
      .then(function (o) { return navigator.credentials.create(creationOptions(o.options)); })
      .then(function (cred) {
        if (!cred) throw new Error("No passkey was created.");
        return attestationJSON(cred);
      });
  }

  function addPasskey() {
    return createPasskey("/auth/passkeys/options", {}).then(function (credential) {
      return api("POST", "/auth/passkeys/verify", { credential: credential });
    });
  }

  function showCodes(codes) {
    var list = document.getElementById("recovery-codes");
    list.textContent = "";
    codes.forEach(function (c) {
      var li = document.createElement("li");
      var code = document.createElement("code");
      code.textContent = c;
      li.appendChild(code);
      list.appendChild(li);
    });
    document.getElementById("codes").hidden = false;
  }

  /** Runs an action from a button or form: busy while it runs, errors to the status line. */
  function action(button, waiting, run) {
    return function (ev) {
      if (ev) ev.preventDefault();
      if (button.disabled || !supported()) return;
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      say(waiting);
      Promise.resolve()
        .then(run)
        .catch(function (err) { say(explain(err), true); })
        .then(function () {
          button.disabled = false;
          button.removeAttribute("aria-busy");
        });
    };
  }

  function value(id) {
    var el = document.getElementById(id);
    return el ? el.value.trim() : "";
  }

  if (page === "register") {
    var registerForm = document.getElementById("register-form");
    registerForm.addEventListener("submit", action(document.getElementById("register"), "Waiting for your passkey…", function () {
      var payload = { username: value("username").toLowerCase() };
      if (value("invite")) payload.invite = value("invite");
      return createPasskey("/auth/register/options", payload)
        .then(function (credential) { return api("POST", "/auth/register/verify", { credential: credential }); })
        .then(function (done) {
          registerForm.hidden = true;
          showCodes(done.recoveryCodes);
          say("Signed up as " + done.user + ". Save your recovery codes now: they are shown only once.");
          document.getElementById("continue").focus();
        });
    }));
  }

  if (page === "login") {
    document.getElementById("login-form").addEventListener("submit", action(document.getElementById("login"), "Waiting for your passkey…", function () {
      var username = value("username").toLowerCase();
      return api("POST", "/auth/login/options", username ? { username: username } : {})
        .then(function (o) { return navigator.credentials.get(requestOptions(o.options)); })
        .then(function (cred) {
          if (!cred) throw new Error("No passkey was chosen.");
          return api("POST", "/auth/login/verify", { credential: assertionJSON(cred) });
        })
        .then(function () {
          say("Signed in.");
          location.assign(next);
        });
    }));
  }

  if (page === "recovery") {
    var recoveryForm = document.getElementById("recovery-form");
    var enrol = document.getElementById("enrol");
    if (recoveryForm) {
      recoveryForm.addEventListener("submit", action(document.getElementById("recover"), "Checking the code…", function () {
        return api("POST", "/auth/recovery", { username: value("username").toLowerCase(), code: value("code") }).then(function () {
          recoveryForm.hidden = true;
          enrol.hidden = false;
          say("Code accepted. Now create a new passkey.");
          document.getElementById("add-passkey").focus();
        });
      }));
    }
    document.getElementById("add-passkey").addEventListener("click", action(document.getElementById("add-passkey"), "Waiting for your passkey…", function () {
      return addPasskey().then(function () {
        say("New passkey saved.");
        location.assign(next);
      });
    }));
  }

  if (page === "account") {
    document.getElementById("add-passkey").addEventListener("click", action(document.getElementById("add-passkey"), "Waiting for your passkey…", function () {
      return addPasskey().then(function () { location.reload(); });
    }));
    document.getElementById("passkeys").addEventListener("click", function (ev) {
      var button = ev.target.closest("button[data-id]");
      if (!button) return;
      action(button, "Removing the passkey…", function () {
        return api("DELETE", "/auth/passkeys/" + encodeURIComponent(button.getAttribute("data-id"))).then(function () { location.reload(); });
      })(ev);
    });
    document.getElementById("regenerate").addEventListener("click", action(document.getElementById("regenerate"), "Making new recovery codes…", function () {
      return api("POST", "/auth/recovery-codes", {}).then(function (done) {
        showCodes(done.recoveryCodes);
        say("New recovery codes below; the old ones no longer work. Save these now: they are shown only once.");
      });
    }));
    document.getElementById("logout").addEventListener("click", action(document.getElementById("logout"), "Signing out…", function () {
      return api("POST", "/auth/logout").then(function () { location.assign("/login"); });
    }));
  }
})();
`;

const style = `
:root { color-scheme: light dark; --accent: #2458c6; --error: #b3261e; font-family: system-ui, sans-serif; line-height: 1.5; }
body { margin: 0; padding: 2rem 1rem; }
main { max-width: 34rem; margin: 0 auto; }
h1 { font-size: 1.6rem; margin-top: 0; }
label { display: block; font-weight: 600; margin-top: 1rem; }
input { font: inherit; padding: .5rem; width: 100%; box-sizing: border-box; border: 1px solid #888; border-radius: 4px; }
button, .button { font: inherit; display: inline-block; margin-top: 1rem; padding: .5rem 1rem; border-radius: 4px; border: 1px solid var(--accent);
  background: var(--accent); color: #fff; cursor: pointer; text-decoration: none; }
button.secondary { background: transparent; color: inherit; border-color: #888; }
button:disabled { opacity: .6; cursor: progress; }
:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.status { min-height: 1.5rem; margin-top: 1rem; }
.status.error { color: var(--error); font-weight: 600; }
.hint { color: #666; font-size: .9rem; }
#recovery-codes { columns: 2; font-size: 1.1rem; }
#passkeys { padding-left: 0; list-style: none; }
#passkeys li { display: flex; justify-content: space-between; align-items: center; gap: 1rem; padding: .5rem 0; border-bottom: 1px solid #8884; }
#passkeys li button { margin-top: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #8884; }
nav a { margin-right: 1rem; }
`;

/** Linked from every page, so the browser does not ask the (signed-out) proxy for /favicon.ico. */
const icon = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#2458c6"/><path d="M4 4v8M12 4v8M4 8h8" stroke="#fff" stroke-width="2"/></svg>`;

export interface Asset {
  body: string;
  type: string;
  etag: string;
}

function asset(body: string, type: string): Asset {
  return { body, type, etag: `"${createHash("sha256").update(body).digest("base64url").slice(0, 22)}"` };
}

/** Served at /_hv/assets/<name>. */
export const assets: Record<string, Asset> = {
  "auth.js": asset(script, "text/javascript; charset=utf-8"),
  "auth.css": asset(style, "text/css; charset=utf-8"),
  "icon.svg": asset(icon, "image/svg+xml"),
};

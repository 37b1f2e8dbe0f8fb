import { PAGE_SCRIPT } from "./page-script.js";
import { PAGE_STYLE } from "./page-style.js";

export interface Identity {
  user: string | null;
  role: string;
  generation: string | null;
  version: string;
  slot: string | null;
}

/** What the page needs besides who is asking. */
export interface PageContext {
  counter: number;
  /** The user's account page on the hypervisor's public origin. */
  accountUrl: string;
  /** Why there is nothing to call outside, when the sandbox was given no egress gateway. */
  noEgress: string | null;
}

const HTML_ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (char) => HTML_ESCAPES[char] ?? char);
}

/** The band at the top: a person must never wonder whether they are on live or on dev. */
const ROLES: Record<string, { label: string; says: string }> = {
  live: { label: "Live", says: "The sandbox you use. What you do here is real." },
  dev: { label: "Dev", says: "Where a new version is tried. Its data is its own, apart from live's." },
};
const NO_ROLE = { label: "Direct", says: "Opened without the hypervisor, so neither live nor dev." };

/**
 * Every URL on the page is relative (no leading slash) so the page keeps working when the proxy
 * serves it under a prefix such as `/dev/`; the one exception is the hypervisor's account page,
 * which lives on the hypervisor's public origin whichever sandbox links to it.
 */
export function renderPage(identity: Identity, page: PageContext): string {
  const role = ROLES[identity.role] ?? NO_ROLE;
  const kind = identity.role in ROLES ? identity.role : "none";
  const field = (id: keyof Identity, label: string): string => `<dt>${label}</dt><dd id="${id}">${escapeHtml(identity[id] ?? "unknown")}</dd>`;
  const account = escapeHtml(page.accountUrl);
  return `<!doctype html>
<html lang="en" data-role="${kind}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>${role.label} · Your sandbox</title>
<style>${PAGE_STYLE}</style>
</head>
<body>
<header>
  <div class="band" id="role-band"><strong id="role-label">${role.label}</strong> <span id="role-says">${role.says}</span></div>
  <nav aria-label="Your account">
    <a id="hv-account" href="${account}">Your account</a>
    <a id="hv-sign-out" href="${account}#logout">Sign out</a>
  </nav>
</header>
<main>
<h1>Your ${kind === "none" ? "" : `${role.label.toLowerCase()} `}sandbox</h1>
<section aria-labelledby="about-title">
<h2 id="about-title">About it</h2>
<dl>
${field("user", "User")}
${field("role", "Running as")}
${field("generation", "Generation")}
${field("version", "Version")}
</dl>
</section>
<section aria-labelledby="data-title">
<h2 id="data-title">Its data</h2>
<p class="hint">Kept in this sandbox's data directory (<code>/data</code>). Live and dev each have their own, so these numbers tell you which data you are looking at.</p>
<div class="figures">
  <p><span class="figure-label">Counter</span> <output id="data-counter" aria-live="polite">${page.counter}</output></p>
  <p><span class="figure-label">Tasks done</span> <output id="task-count">…</output></p>
</div>
<button id="counter-add" type="button">Add one to the counter</button>
</section>
<section aria-labelledby="task-title">
<h2 id="task-title">Run a task</h2>
<form id="task-form">
  <label for="task-input">Text to turn into capitals</label>
  <div class="row">
    <input id="task-input" name="input" required autocomplete="off">
    <button id="task-run" type="submit">Run</button>
  </div>
</form>
<p>Progress: <span id="task-progress" role="status" aria-live="polite">idle</span></p>
<p>Result: <output id="task-result" for="task-input" aria-live="polite"></output></p>
<h3>Recent tasks</h3>
<ol id="task-history"></ol>
</section>
<section aria-labelledby="egress-title">
<h2 id="egress-title">Outside services</h2>
<p class="hint">A call goes through the hypervisor's egress gateway, which adds the service's key on the way out: this sandbox never holds it.</p>
<p id="egress-status" role="status">${page.noEgress ? escapeHtml(page.noEgress) : "Asking the gateway which routes there are…"}</p>
${
  page.noEgress
    ? ""
    : `<form id="egress-form" hidden>
  <div class="row">
    <span class="field"><label for="egress-route">Route</label> <select id="egress-route"></select></span>
    <span class="field grow"><label for="egress-path">Path</label> <input id="egress-path" value="/" autocomplete="off" spellcheck="false"></span>
    <button id="egress-call" type="submit">Call</button>
  </div>
</form>
<div id="egress-answer" hidden>
  <p id="egress-answer-status"></p>
  <pre id="egress-answer-body"></pre>
</div>`
}
</section>
</main>
<script>${PAGE_SCRIPT}</script>
</body>
</html>
`;
}

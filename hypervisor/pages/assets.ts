import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

/**
 * The pages' script and style, served from /_hv/assets/ so the CSP can say script-src 'self'
 * (no inline script). The script is browser/auth.ts, type-checked and compiled by
 * tsconfig.browser.json next to this module's compiled file; it is read once, at load, and
 * served byte for byte. The style and icon are kept as strings.
 */
function compiledScript(name: string): string {
  const url = new URL(`./browser/${name}`, import.meta.url);
  try {
    return readFileSync(url, "utf8");
  } catch (err) {
    throw new Error(`the pages' browser script ${fileURLToPath(url)} is missing: run \`npm run build\``, { cause: err });
  }
}

const script = compiledScript("auth.js");

/**
 * Both colour schemes with explicit colours, each pair at least WCAG 2.1 AA: 4.5:1 for text
 * (error text, hints, links) and 3:1 for the focus ring and control borders (SC 1.4.3, 1.4.11).
 */
const style = `
:root { color-scheme: light dark; --bg: #fff; --fg: #1a1a1a; --muted: #595959; --accent: #2458c6; --on-accent: #fff;
  --error: #b3261e; --ok: #1e6b34; --border: #767676; --panel: #f3f5f9;
  font-family: system-ui, sans-serif; line-height: 1.5; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #121212; --fg: #ececec; --muted: #b4b4b4; --accent: #8ab4ff; --on-accent: #0b1a33;
    --error: #ff8a80; --ok: #7ddc8f; --border: #9a9a9a; --panel: #1e2230; }
}
body { margin: 0; padding: 0 1rem 2rem; background: var(--bg); color: var(--fg); }
/* hidden must win over a class's display (a hidden .button is still hidden). */
[hidden] { display: none !important; }
main { max-width: 40rem; margin: 0 auto; padding-top: 1rem; }
a { color: var(--accent); }
h1 { font-size: 1.6rem; margin-top: 0; }
h2 { font-size: 1.25rem; margin-top: 2rem; }
label { display: block; font-weight: 600; margin-top: 1rem; }
input { font: inherit; padding: .5rem; width: 100%; box-sizing: border-box; border: 1px solid var(--border); border-radius: 4px;
  background: var(--bg); color: var(--fg); }
input[aria-invalid="true"] { border: 2px solid var(--error); }
button, .button { font: inherit; display: inline-block; margin-top: 1rem; padding: .5rem 1rem; border-radius: 4px; border: 1px solid var(--accent);
  background: var(--accent); color: var(--on-accent); cursor: pointer; text-decoration: none; }
button.secondary, .button.secondary { background: transparent; color: var(--fg); border-color: var(--border); }
button:disabled { opacity: .6; cursor: not-allowed; }
button[aria-busy="true"] { cursor: progress; }
:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.status { min-height: 1.5rem; margin: 0 0 1rem; }
.status:empty { margin: 0; min-height: 0; }
.status:not(:empty) { padding: .5rem .75rem; border-radius: 4px; background: var(--panel); }
/* The page's own status line stays in view however far down the action was. */
#status:not(:empty) { position: sticky; top: 0; z-index: 1; }
.status.error, .field-error, .error { color: var(--error); font-weight: 600; }
.field-error:empty { display: none; }
.field-error { margin: .25rem 0 0; }
.hint { color: var(--muted); font-size: .9rem; }
.start-steps li[aria-current="step"] { font-weight: 600; }
.menu { max-width: 40rem; margin: 0 auto; display: flex; flex-wrap: wrap; align-items: center; gap: .25rem 1rem;
  padding: .75rem 0; border-bottom: 1px solid var(--border); }
.menu .who { margin-right: auto; }
.menu button { margin-top: 0; padding: .25rem .75rem; }
/* A grid, not CSS columns: a column's outside markers ("10.") would sit on the text of the one before it. */
#recovery-codes { display: grid; grid-template-columns: repeat(auto-fill, minmax(12rem, 1fr)); gap: .25rem 1.5rem; padding-left: 0;
  list-style-position: inside; font-size: 1.1rem; }
#recovery-codes code { white-space: nowrap; }
#passkeys { padding-left: 0; list-style: none; }
#passkeys li { display: flex; justify-content: space-between; align-items: center; gap: 1rem; padding: .5rem 0; border-bottom: 1px solid var(--border); }
#passkeys li button { margin-top: 0; }
.row-actions { display: flex; flex-wrap: wrap; gap: .5rem; }
.sandbox { border: 1px solid var(--border); border-radius: 6px; padding: .75rem 1rem; margin-top: 1rem; }
.sandbox h3 { margin: 0; font-size: 1.1rem; }
.sandbox dl { display: grid; grid-template-columns: max-content 1fr; gap: 0 1rem; margin: .5rem 0 0; }
.sandbox dt { color: var(--muted); }
.sandbox dd { margin: 0; }
.sandbox .row-actions button { margin-top: .75rem; }
/* No height limit: the few entries shown are all in view, the newest at the bottom, none scrolled away. */
.sandbox pre { background: var(--panel); padding: .5rem; font-size: .8rem; white-space: pre-wrap; overflow-wrap: anywhere; }
dialog { background: var(--bg); color: var(--fg); border: 1px solid var(--border); border-radius: 6px; max-width: 28rem; }
dialog::backdrop { background: #0008; }
.request-id { margin-top: 2rem; }
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

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

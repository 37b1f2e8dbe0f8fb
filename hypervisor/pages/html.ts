import type { MiddlewareHandler } from "hono";

/** Text for HTML content and quoted attribute values (HTML §13.1.2.3, §13.5). */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[ch]!);
}

/** A fragment whose text is already escaped. */
export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

/** Tagged template that escapes every interpolation unless it is already Html (or a list of it). */
export function html(strings: TemplateStringsArray, ...values: unknown[]): Html {
  let out = strings[0]!;
  values.forEach((v, i) => {
    out += render(v) + strings[i + 1]!;
  });
  return new Html(out);
}

function render(v: unknown): string {
  if (v instanceof Html) return v.text;
  if (Array.isArray(v)) return v.map(render).join("");
  if (v === undefined || v === null || v === false) return "";
  return escapeHtml(String(v));
}

/**
 * Every hypervisor page: scripts and styles only from /_hv/assets (no inline code), no framing,
 * no referrer to other origins, no MIME sniffing, no caching of pages that show account data.
 */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "form-action 'self'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join("; ");

export function securityHeaders(): MiddlewareHandler {
  return async function securityHeaders(c, next) {
    await next();
    c.header("Content-Security-Policy", CONTENT_SECURITY_POLICY);
    c.header("X-Frame-Options", "DENY");
    c.header("Referrer-Policy", "same-origin");
    c.header("X-Content-Type-Options", "nosniff");
    c.header("Cross-Origin-Opener-Policy", "same-origin");
    if (!c.res.headers.has("Cache-Control")) c.header("Cache-Control", "no-store");
  };
}

export interface PageOptions {
  title: string;
  /** Which part of /_hv/assets/auth.js runs (body[data-page]). */
  page: string;
  next?: string;
  body: Html;
  /** Above the page's content: the account menu. */
  header?: Html;
  /** More body[data-*] attributes for the script. */
  data?: Record<string, string>;
  /**
   * Where /_hv/assets is served: the public origin. A page the proxy answers on a sandbox origin
   * links its style there, as that origin serves nothing of ours but /_hv/launch.
   */
  assetsOrigin?: string;
  /** false: the page works without the script (an error page, or a page on a sandbox origin). */
  script?: boolean;
  /** Reload after this many seconds: how a page without its script follows a starting sandbox. */
  refreshSeconds?: number;
  /** What a browser without JavaScript is told, when the page has a script. */
  noscript?: string;
}

export function layout(o: PageOptions): string {
  const assets = `${o.assetsOrigin ?? ""}/_hv/assets`;
  const script = o.script ?? true;
  const data = Object.entries(o.data ?? {}).map(([k, v]) => html` data-${k}="${v}"`);
  return html`<!doctype html>
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        ${o.refreshSeconds === undefined ? "" : html`<meta http-equiv="refresh" content="${o.refreshSeconds}" />`}
        <title>${o.title} · hypervisor</title>
        <link rel="icon" href="${assets}/icon.svg" type="image/svg+xml" />
        <link rel="stylesheet" href="${assets}/auth.css" />
        ${script ? html`<script src="${assets}/auth.js" defer></script>` : ""}
      </head>
      <body data-page="${o.page}" data-next="${o.next ?? "/"}"${data}>
        ${o.header ?? ""}
        <main>
          <p id="status" class="status" role="status" aria-live="polite"></p>
          ${o.body}
          ${script ? html`<noscript><p class="status error">${o.noscript ?? "These pages need JavaScript for passkeys."}</p></noscript>` : ""}
        </main>
      </body>
    </html> `.text;
}

/** The CSP of a page the proxy answers, which may be on a sandbox origin: our assets come from the public origin. */
export function proxiedPageSecurityHeaders(publicOrigin: URL): Record<string, string> {
  const ours = publicOrigin.origin;
  return {
    "content-security-policy": CONTENT_SECURITY_POLICY.replace("style-src 'self'", `style-src 'self' ${ours}`).replace(
      "img-src 'self'",
      `img-src 'self' ${ours}`,
    ),
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
  };
}

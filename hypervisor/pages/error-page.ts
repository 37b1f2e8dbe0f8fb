import type { HypervisorError } from "../errors.js";
import { html, layout } from "./html.js";

/** What a browser reader is told first; the error's own message follows. */
const HEADINGS: Partial<Record<HypervisorError["code"], string>> = {
  bad_request: "This address cannot be opened",
  validation_failed: "This address cannot be opened",
  unauthorized: "You are not signed in",
  forbidden: "This is not allowed",
  step_up_required: "Confirm with your passkey first",
  not_found: "Nothing here",
  rate_limited: "Too many requests",
  upstream_unreachable: "Your sandbox does not answer",
  start_timeout: "Your sandbox did not start",
  capacity_exhausted: "No room for your sandbox right now",
  runtime_unavailable: "Sandboxes are unavailable right now",
  not_ready: "The hypervisor is not ready",
};

/** Messages start lower-case and end bare, to read well inside logs and JSON; a page shows sentences. */
function sentence(text: string): string {
  const s = text.charAt(0).toUpperCase() + text.slice(1);
  return /[.!?]$/.test(s) ? s : `${s}.`;
}

export interface ErrorPageOptions {
  requestId: string;
  /**
   * The public origin, for the links back and the style, on a page the proxy answers (which may
   * be a sandbox origin's); unset on the public origin's own pages.
   */
  origin?: string;
}

/**
 * The readable page a browser gets instead of the JSON error (Accept: text/html): what
 * happened, the ways back (try again when trying again can help, the account page, sign-in), and the request id, small,
 * for the operator's logs. Status and headers stay those of the JSON error.
 */
export function errorPage(err: HypervisorError, o: ErrorPageOptions): string {
  const origin = o.origin ?? "";
  const heading = HEADINGS[err.code] ?? (err.status >= 500 ? "Something went wrong" : "This request was refused");
  const retryAfter = err.details?.retryAfterSeconds;
  const signIn = err.code === "unauthorized";
  // The same request refused for what it is (a bad address, not found, forbidden) is refused again.
  const retryable = err.status >= 500 || err.status === 408 || err.status === 429;
  return layout({
    title: heading,
    page: "error",
    script: false,
    assetsOrigin: origin,
    body: html`
<h1>${heading}</h1>
<p id="error-message">${sentence(err.message)}</p>
${typeof retryAfter === "number" ? html`<p>Trying again in ${retryAfter} s may work.</p>` : ""}
<nav aria-label="Ways back">
  <p>
    ${retryable ? html`<a class="button" id="retry" href="">Try again</a>` : ""}
    ${signIn ? html`<a class="button secondary" id="sign-in" href="${origin}/login">Sign in</a>` : html`<a class="button secondary" id="to-account" href="${origin}/_hv/account">Your account</a>`}
  </p>
</nav>
<p class="hint request-id">Request id <code id="request-id">${o.requestId}</code> (${err.code})</p>`,
  });
}

import type { Role, Slot, Target } from "../../proxy/target.js";
import type { BrowserPages as ProxyBrowserPages, ProxyPage } from "../../proxy/public-proxy.js";
import { asHypervisorError, type HypervisorError } from "../errors.js";
import type { HtmlErrorPage } from "../http/error-handling.js";
import type { StartProgress } from "../sandboxes/sandbox-manager.js";
import { errorPage } from "./error-page.js";
import { CONTENT_SECURITY_POLICY, html, layout, proxiedPageSecurityHeaders } from "./html.js";

const HTML = "text/html; charset=utf-8";
/** How often a starting page without its script reloads itself (a sandbox origin's). */
const REFRESH_SECONDS = 2;
/** A start that failed this recently is what such a reload reports, rather than starting again unseen. */
const RECENT_FAILURE_MS = 5000;

/**
 * The pages a browser gets where an API client gets JSON (DESIGN §4): readable errors, and a
 * "starting your sandbox" page that follows a start instead of a blank wait. It remembers how
 * the latest start of each sandbox ended, so the starting page can say why one failed.
 */
export class BrowserPages implements ProxyBrowserPages {
  private readonly failures = new Map<string, { at: number; error: HypervisorError }>();
  /** The latest report of each slot's start in progress (by user and slot: a swap does not move a start), and when each of its steps began. */
  private readonly starts = new Map<string, StartSteps>();

  constructor(
    private readonly o: { publicOrigin: URL; sandboxOrigins: boolean },
    private readonly now: () => number = Date.now,
  ) {}

  /** An error page the proxy answers: perhaps on a sandbox origin, so every link and asset is absolute. */
  error(err: HypervisorError, requestId: string): ProxyPage {
    return { body: errorPage(err, { requestId, origin: this.o.publicOrigin.origin }), headers: this.proxiedHeaders() };
  }

  /** An error page of the public app itself (same origin as its assets). */
  readonly ownError: HtmlErrorPage = (err, requestId) => ({
    body: errorPage(err, { requestId }),
    headers: { "content-type": HTML, "content-security-policy": CONTENT_SECURITY_POLICY, "x-frame-options": "DENY", "x-content-type-options": "nosniff" },
  });

  starting(user: string, role: Role, started: Promise<Target>): ProxyPage {
    const since = this.now();
    const recent = this.failures.get(key(user, role));
    this.watch(user, role, started);
    const origin = this.o.publicOrigin.origin;
    // Without the script (a sandbox origin cannot ask the public origin's status route), the page
    // reloads itself; a reload just after a failed start shows that failure instead of looping.
    if (this.o.sandboxOrigins && recent && since - recent.at < RECENT_FAILURE_MS) {
      return { body: errorPage(recent.error, { requestId: "-", origin }), headers: this.proxiedHeaders() };
    }
    const title = `Starting your ${role} sandbox…`;
    const body = layout({
      title,
      page: "starting",
      script: !this.o.sandboxOrigins,
      assetsOrigin: origin,
      data: { user, role, since: String(since) },
      noscript: "Without JavaScript this page cannot follow the start: reload it in a few seconds.",
      ...(this.o.sandboxOrigins ? { refreshSeconds: REFRESH_SECONDS } : {}),
      body: html`
<h1 id="start-title">${title}</h1>
<p id="start-detail">It was not running, so it is starting now. This page reloads by itself as soon as it is ready.</p>
<progress id="start-progress" aria-label="${title}"></progress>
<ol id="start-steps" class="start-steps" aria-label="Steps so far"></ol>
<p id="start-elapsed" class="hint"></p>
<p id="start-health" class="hint" hidden></p>
<p id="start-failure" class="error" hidden></p>
<nav aria-label="Ways back">
  <p><a class="button" id="retry" href="" hidden>Try again</a> <a class="button secondary" id="to-account" href="${origin}/_hv/account">Your account</a></p>
</nav>`,
    });
    return { body, headers: this.proxiedHeaders() };
  }

  /** Follows a start of (user, role), whoever asked for it, to report a failure on the starting page. */
  watch(user: string, role: Role, started: Promise<unknown>): void {
    const k = key(user, role);
    started.then(
      () => this.failures.delete(k),
      (err: unknown) => this.failures.set(k, { at: this.now(), error: asHypervisorError(err) }),
    );
  }

  /** Why the latest start of (user, role) failed, when it failed at or after `since` (ms). */
  failureSince(user: string, role: Role, since: number): HypervisorError | undefined {
    const f = this.failures.get(key(user, role));
    return f && f.at >= since ? f.error : undefined;
  }

  /** What the manager reports of a start (SandboxManager.onStartProgress). */
  progressed(p: StartProgress): void {
    const k = `${p.user}/${p.slot}`;
    if (p.phase === "healthy") return void this.starts.delete(k);
    const earlier = this.starts.get(k);
    // A start's first report is `creating` or `starting`: either begins a new list, unless it follows this start's own `creating`.
    const fresh = !earlier || p.phase === "creating" || (p.phase === "starting" && earlier.latest.phase !== "creating");
    const steps = fresh ? [] : earlier.steps;
    if (steps.at(-1)?.phase !== p.phase) steps.push({ phase: p.phase, atMs: p.elapsedMs });
    this.starts.set(k, { latest: p, steps });
  }

  /** How the slot's start is going, while it is in progress: the latest report and when each step began. */
  progressOf(user: string, slot: Slot): StartSteps | undefined {
    return this.starts.get(`${user}/${slot}`);
  }

  private proxiedHeaders(): Record<string, string> {
    return { "content-type": HTML, ...proxiedPageSecurityHeaders(this.o.publicOrigin) };
  }
}

const key = (user: string, role: Role) => `${user}/${role}`;

/** What the starting page's script reads of a start: phase, seconds, failed probes, each step, and what /health last said. */
export function startProgressView(s: StartSteps) {
  const { phase, attempts, elapsedMs, lastAnswer } = s.latest;
  return { phase, attempts, elapsedMs, steps: s.steps, ...(lastAnswer === undefined ? {} : { lastAnswer }) };
}

/** A start in progress as the starting page shows it: its steps with the time each began (ms into the start). */
export interface StartSteps {
  latest: StartProgress;
  steps: { phase: StartProgress["phase"]; atMs: number }[];
}

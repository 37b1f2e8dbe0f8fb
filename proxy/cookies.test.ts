import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { expiredCookies, MAX_SESSION_COOKIES, parseCookies, setsOurCookie } from "./cookies.js";

const TOKEN = "A".repeat(43);

describe("parseCookies: one reading for authentication and forwarding", () => {
  it("reads a name the way RFC 6265 §5.2 does (trimmed), so what authenticates is never forwarded", () => {
    for (const header of [`hv_session =${TOKEN}`, `hv_session\t= ${TOKEN} `, ` hv_session=${TOKEN}`, `hv_session="${TOKEN}"`]) {
      const { sessions, forwarded } = parseCookies(`theme=dark; ${header}; lang=en`);
      assert.deepEqual(sessions, [TOKEN], header);
      assert.equal(forwarded, "theme=dark; lang=en", header);
    }
  });

  it("keeps the sandbox's own cookies, nameless ones and look-alikes, and forwards nothing when only ours were sent", () => {
    const { sessions, forwarded } = parseCookies("hv_session_x=1; xhv_session=2; HV_SESSION=3; plain; a=b=c;;");
    assert.deepEqual(sessions, []);
    assert.equal(forwarded, "hv_session_x=1; xhv_session=2; HV_SESSION=3; plain; a=b=c");
    assert.equal(parseCookies(`hv_session=${TOKEN}; hv_sandbox=x; __Host-hv_session=y; __Host-hv_sandbox=z`).forwarded, undefined);
    assert.deepEqual(parseCookies(undefined), { sessions: [], sandboxes: [], forwarded: undefined });
    assert.deepEqual(parseCookies(`hv_sandbox = ${TOKEN}; a=1`).sandboxes, [TOKEN]);
  });

  it("does not trim more than SP and HTAB: a name with NBSP is another cookie, as in a browser", () => {
    const { sessions, forwarded } = parseCookies(`\u00a0hv_session=${TOKEN}`);
    assert.deepEqual(sessions, []);
    assert.equal(forwarded, `\u00a0hv_session=${TOKEN}`);
  });

  it("keeps one more session cookie than may be tried, so a flood is seen as one", () => {
    const flood = Array.from({ length: 10 }, (_, i) => `hv_session=${i}`).join("; ");
    assert.equal(parseCookies(flood).sessions.length, MAX_SESSION_COOKIES + 1);
  });
});

describe("setsOurCookie: what a sandbox may not set", () => {
  it("recognises hv_session and hv_sandbox, bare or __Host-, however the name is spaced", () => {
    for (const line of [
      "hv_session=x",
      "hv_session=; Max-Age=0",
      " hv_session =x; Path=/dev",
      "hv_sandbox=x; HttpOnly",
      "__Host-hv_session=x; Secure; Path=/",
      "__Host-hv_sandbox=x",
      // Nameless (RFC 6265bis §5.6): the browser sends back just `hv_session=x`.
      "=hv_session=x; Path=/dev",
      "= hv_session =x",
    ]) {
      assert.equal(setsOurCookie(line), true, line);
    }
  });

  it("lets the sandbox's own cookies through", () => {
    for (const line of ["theme=dark; Path=/", "hv_sessions=1", "session=hv_session", "HV_SESSION=1", "hv_session", "==hv_session=x", "a=b; hv_session=x"]) {
      assert.equal(setsOurCookie(line), false, line);
    }
  });
});

describe("expiredCookies", () => {
  const where = (lines: string[]) =>
    lines.map((l) => `${/Path=([^;]*)/.exec(l)![1]}${/Domain=([^;]*)/.exec(l)?.[1] ? ` @${/Domain=([^;]*)/.exec(l)![1]}` : ""}`);

  it("expires the cookie at /, /dev and each path a cookie sent to this path could have (RFC 6265 §5.1.4)", () => {
    const lines = expiredCookies("hv_session", "/dev/app/", "10.0.0.1", false);
    assert.deepEqual(where(lines), ["/", "/dev", "/dev/", "/dev/app", "/dev/app/"], "an IP address host takes no Domain");
    for (const line of lines) assert.match(line, /^hv_session=; Path=[^;]+; Max-Age=0; HttpOnly; SameSite=Lax$/);
    assert.match(expiredCookies("hv_session", "/", "10.0.0.1", true)[0]!, /; Secure$/);
  });

  it("expires it host-only and at each Domain a sibling host could have tossed it with (§5.1.3)", () => {
    assert.deepEqual(where(expiredCookies("hv_session", "/", "hv.example.org", false)), [
      "/",
      "/ @hv.example.org",
      "/ @example.org",
      "/dev",
      "/dev @hv.example.org",
      "/dev @example.org",
    ]);
    assert.deepEqual(where(expiredCookies("hv_session", "/", "localhost", false)), ["/", "/ @localhost", "/dev", "/dev @localhost"]);
  });

  it("never writes a path that could add attributes, and stays bounded", () => {
    assert.deepEqual(where(expiredCookies("hv_session", "/a;Domain=evil.example/b", "::1", false)), ["/", "/dev"]);
    assert.ok(expiredCookies("hv_session", "/a".repeat(100), "::1", false).length <= 8);
  });
});

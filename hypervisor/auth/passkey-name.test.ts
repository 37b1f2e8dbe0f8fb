import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { passkeyName } from "./passkey-name.js";

const at = Date.UTC(2026, 11, 7, 23, 59);
const CHROME_LINUX = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36";
const SAFARI_IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
const EDGE_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0";
const FIREFOX_ANDROID = "Mozilla/5.0 (Android 14; Mobile; rv:121.0) Gecko/121.0 Firefox/121.0";

describe("a new passkey's name", () => {
  const name = (o: { transports?: string[]; backedUp?: boolean; userAgent?: string; taken?: string[] }) =>
    passkeyName({ transports: o.transports ?? ["internal"], backedUp: o.backedUp ?? false, userAgent: o.userAgent, at, taken: o.taken ?? [] });

  it("says the kind of authenticator, the browser and system it was added from, and the day (UTC)", () => {
    assert.equal(name({ userAgent: CHROME_LINUX }), "Passkey from Chrome on Linux, 7 Dec 2026");
    assert.equal(name({ userAgent: SAFARI_IPHONE, backedUp: true }), "Synced passkey from Safari on iOS, 7 Dec 2026");
    assert.equal(name({ userAgent: EDGE_WINDOWS, transports: ["usb", "nfc"] }), "Security key from Edge on Windows, 7 Dec 2026");
    assert.equal(name({ userAgent: FIREFOX_ANDROID, transports: ["hybrid"] }), "Passkey on a phone from Firefox on Android, 7 Dec 2026");
  });

  it("does without a User-Agent it cannot read, and never repeats one of the user's names", () => {
    assert.equal(name({}), "Passkey, 7 Dec 2026");
    assert.equal(name({ userAgent: "curl/8.0" }), "Passkey, 7 Dec 2026");
    assert.equal(name({ taken: ["Passkey, 7 Dec 2026"] }), "Passkey, 7 Dec 2026 (2)");
    assert.equal(name({ taken: ["Passkey, 7 Dec 2026", "Passkey, 7 Dec 2026 (2)"] }), "Passkey, 7 Dec 2026 (3)");
  });
});

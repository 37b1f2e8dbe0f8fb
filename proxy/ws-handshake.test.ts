import assert from "node:assert/strict";
import type { IncomingHttpHeaders } from "node:http";
import { describe, it } from "node:test";
import { checkHandshake } from "./ws-handshake.js";

const valid: IncomingHttpHeaders = {
  connection: "Upgrade",
  upgrade: "websocket",
  "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
  "sec-websocket-version": "13",
};

describe("WebSocket opening handshake (RFC 6455 §4.2.1)", () => {
  it("accepts a valid handshake, in any letter case, and lists the subprotocols offered", () => {
    assert.deepEqual(checkHandshake("GET", valid), { ok: true, protocols: [] });
    assert.deepEqual(checkHandshake("GET", { ...valid, upgrade: "WebSocket", connection: "keep-alive, UPGRADE" }), { ok: true, protocols: [] });
    assert.deepEqual(checkHandshake("GET", { ...valid, "sec-websocket-protocol": "graphql-ws,  chat" }), { ok: true, protocols: ["graphql-ws", "chat"] });
  });

  it("refuses every other request, saying why", () => {
    const cases: [string, string | undefined, IncomingHttpHeaders, RegExp][] = [
      ["a POST", "POST", valid, /GET/],
      ["h2c", "GET", { ...valid, upgrade: "h2c" }, /Upgrade/],
      ["two protocols", "GET", { ...valid, upgrade: "websocket, h2c" }, /Upgrade/],
      ["no Upgrade", "GET", { ...valid, upgrade: undefined }, /Upgrade/],
      ["no upgrade in Connection", "GET", { ...valid, connection: "keep-alive, upgrade-insecure" }, /Connection/],
      ["no Connection", "GET", { ...valid, connection: undefined }, /Connection/],
      ["no key", "GET", { ...valid, "sec-websocket-key": undefined }, /Key/],
      ["a key of 8 bytes", "GET", { ...valid, "sec-websocket-key": "c2hvcnQ=" }, /Key/],
      ["a key of 17 bytes", "GET", { ...valid, "sec-websocket-key": "MDEyMzQ1Njc4OWFiY2RlZmc=" }, /Key/],
      ["a key that is not base64", "GET", { ...valid, "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ!!" }, /Key/],
      ["no version", "GET", { ...valid, "sec-websocket-version": undefined }, /Version/],
      ["version 8", "GET", { ...valid, "sec-websocket-version": "8" }, /Version/],
      ["a duplicated subprotocol", "GET", { ...valid, "sec-websocket-protocol": "chat, chat" }, /Protocol/],
      ["a subprotocol with a space", "GET", { ...valid, "sec-websocket-protocol": "a b" }, /Protocol/],
      ["an empty subprotocol", "GET", { ...valid, "sec-websocket-protocol": "chat," }, /Protocol/],
    ];
    for (const [what, method, headers, reason] of cases) {
      const verdict = checkHandshake(method, headers);
      assert.equal(verdict.ok, false, what);
      if (!verdict.ok) {
        assert.match(verdict.reason, reason, what);
        assert.equal(verdict.badVersion, /version/.test(what), what);
      }
    }
  });
});

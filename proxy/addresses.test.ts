import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { AddressSet, rateLimitKey } from "./addresses.js";
import { clientAddressOf } from "./headers.js";

const loopback = AddressSet.parse("127.0.0.1/32, ::1/128");

describe("AddressSet", () => {
  it("matches IPv4 and IPv6 blocks, IPv4-mapped peers included", () => {
    const set = AddressSet.parse("10.0.0.0/8 192.168.1.128/25,2001:db8:ab::/48,::1");
    for (const inside of [
      "10.0.0.1",
      "10.255.255.255",
      "192.168.1.200",
      "::ffff:10.1.2.3",
      "2001:db8:ab::1",
      "2001:db8:ab:ffff:1:2:3:4",
      "::1",
      "0:0:0:0:0:0:0:1",
    ])
      assert.ok(set.has(inside), inside);
    for (const outside of ["11.0.0.1", "192.168.1.127", "2001:db8:ac::1", "::2", "::ffff:11.0.0.1", "not-an-address", "", "10.0.0.1/8"])
      assert.ok(!set.has(outside), outside);
    assert.ok(AddressSet.parse("0.0.0.0/0").has("8.8.8.8"));
    assert.ok(!AddressSet.parse("0.0.0.0/0").has("2001:db8::1"), "an IPv4 block holds IPv4 addresses only");
    assert.ok(AddressSet.parse("::/0").has("2001:db8::1"));
    assert.ok(AddressSet.parse("fe80::/10").has("fe80::1%eth0"), "a zone index does not change the address");
    assert.ok(AddressSet.parse("::ffff:0:0/96").has("1.2.3.4"));
    assert.equal(AddressSet.parse(" , ").size, 0);
    assert.ok(!AddressSet.empty.has("127.0.0.1"));
  });

  it("places every group of an IPv6 address, compressed or not, with an embedded IPv4 tail", () => {
    fc.assert(
      fc.property(fc.ipV6(), fc.integer({ min: 0, max: 128 }), (address, prefix) => {
        const expanded = expand(address);
        const block = `${expanded.slice(0, prefix)}${"0".repeat(128 - prefix)}`;
        const cidr = `${bitsToIPv6(block)}/${prefix}`;
        assert.ok(AddressSet.parse(cidr).has(address), `${address} in ${cidr}`);
        if (prefix > 0) {
          const flipped = `${expanded.slice(0, prefix - 1)}${expanded[prefix - 1] === "0" ? "1" : "0"}`;
          const other = `${bitsToIPv6(`${flipped}${"0".repeat(128 - prefix)}`)}/${prefix}`;
          assert.ok(!AddressSet.parse(other).has(address), `${address} not in ${other}`);
        }
      }),
      { numRuns: 1000 },
    );
  });

  it("refuses what is not a block, with the entry in the message", () => {
    for (const bad of [
      "10.0.0.0/33",
      "::/129",
      "10.0.0.1/8",
      "2001:db8::1/32",
      "300.1.1.1",
      "localhost",
      "10.0.0.0/",
      "10.0.0.0/-1",
      "fe80::1%eth0/128",
      "10.0.0.0/8x",
    ])
      assert.throws(() => AddressSet.parse(bad), new RegExp(JSON.stringify(bad).replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")), bad);
  });
});

describe("clientAddressOf", () => {
  it("is the socket peer unless the peer is a trusted proxy, whatever X-Forwarded-For says", () => {
    assert.equal(clientAddressOf("127.0.0.1", "8.8.8.8", AddressSet.empty), "127.0.0.1", "no trusted proxies: the header is never read");
    assert.equal(clientAddressOf("203.0.113.5", "8.8.8.8", loopback), "203.0.113.5");
    assert.equal(clientAddressOf("::ffff:203.0.113.5", "8.8.8.8", loopback), "::ffff:203.0.113.5");
    assert.equal(clientAddressOf(undefined, "8.8.8.8", loopback), "unknown");
  });

  it("walks X-Forwarded-For from the right past trusted hops only", () => {
    const chain = AddressSet.parse("127.0.0.1/32, 10.0.0.0/8");
    assert.equal(clientAddressOf("127.0.0.1", "198.51.100.7", loopback), "198.51.100.7");
    assert.equal(clientAddressOf("::ffff:127.0.0.1", "198.51.100.7", loopback), "198.51.100.7");
    assert.equal(clientAddressOf("127.0.0.1", "6.6.6.6, 198.51.100.7", loopback), "198.51.100.7", "what the client claimed stays left");
    assert.equal(clientAddressOf("127.0.0.1", "6.6.6.6, 198.51.100.7, 10.1.1.1", chain), "198.51.100.7");
    assert.equal(clientAddressOf("127.0.0.1", "6.6.6.6, 198.51.100.7, 10.1.1.1", loopback), "10.1.1.1", "an untrusted hop is the client");
    assert.equal(clientAddressOf("127.0.0.1", ["6.6.6.6", "2001:db8::9"], loopback), "2001:db8::9");
    assert.equal(clientAddressOf("127.0.0.1", "10.2.2.2, 10.1.1.1", chain), "10.2.2.2", "all hops trusted: the leftmost");
    assert.equal(clientAddressOf("127.0.0.1", "not-an-address", loopback), "127.0.0.1", "a malformed hop: the proxy that sent it");
    assert.equal(clientAddressOf("127.0.0.1", "6.6.6.6, junk, 10.1.1.1", chain), "10.1.1.1");
    assert.equal(clientAddressOf("127.0.0.1", "", loopback), "127.0.0.1");
    assert.equal(clientAddressOf("127.0.0.1", "6.6.6.6,", loopback), "127.0.0.1");
  });
});

describe("rateLimitKey", () => {
  it("keys IPv4 by address and IPv6 by its /64", () => {
    assert.equal(rateLimitKey("198.51.100.7"), "198.51.100.7");
    assert.equal(rateLimitKey("::ffff:198.51.100.7"), "198.51.100.7");
    assert.equal(rateLimitKey("2001:db8:1:2::1"), "2001:db8:1:2::/64");
    assert.equal(rateLimitKey("2001:DB8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::/64");
    assert.notEqual(rateLimitKey("2001:db8:1:3::1"), rateLimitKey("2001:db8:1:2::1"));
    assert.equal(rateLimitKey("unknown"), "unknown");
  });
});

/** An IPv6 address as 128 "0"/"1" characters, by an independent route (hex groups). */
function expand(address: string): string {
  let text = address;
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.includes("::") ? text.split("::") : [text, undefined];
  const left = head ? head.split(":") : [];
  const right = tail === undefined ? [] : tail ? tail.split(":") : [];
  const groups = tail === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill("0"), ...right];
  return groups.map((g) => Number.parseInt(g, 16).toString(2).padStart(16, "0")).join("");
}

function bitsToIPv6(bits: string): string {
  const groups: string[] = [];
  for (let i = 0; i < 128; i += 16) groups.push(Number.parseInt(bits.slice(i, i + 16), 2).toString(16));
  return groups.join(":");
}

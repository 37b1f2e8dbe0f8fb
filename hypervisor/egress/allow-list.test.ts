import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { EgressAllowList, normalizeHost } from "./allow-list.js";

describe("HYPERVISOR_EGRESS_ALLOW", () => {
  const allow = EgressAllowList.parse("api.example.org, *.pkg.example.net 10.77.0.0/16,fd00:77::/64");

  it("allows exact names and names below a *.suffix, nothing else", () => {
    assert.ok(allow.allowsName("api.example.org"));
    assert.ok(allow.allowsName("a.pkg.example.net"));
    assert.ok(allow.allowsName("b.a.pkg.example.net"));
    assert.ok(!allow.allowsName("pkg.example.net"), "the suffix itself is not below it");
    assert.ok(!allow.allowsName("evilpkg.example.net"));
    assert.ok(!allow.allowsName("example.org"));
    assert.ok(!allow.allowsName("api.example.org.evil.test"));
    assert.ok(!EgressAllowList.empty.allowsName("api.example.org"));
  });

  it("compares names lower-cased, without a trailing dot, IDNA in ASCII form", () => {
    assert.equal(normalizeHost("API.Example.ORG."), "api.example.org");
    assert.equal(normalizeHost("bücher.example"), "xn--bcher-kva.example");
    assert.ok(EgressAllowList.parse("bücher.example").allowsName(normalizeHost("XN--BCHER-KVA.example")!));
    for (const bad of ["", ".", "a..b", "-a.example", "a_b.example", "x".repeat(64) + ".example", "a b", "a.example..", "[::1]"]) {
      assert.equal(normalizeHost(bad), undefined, bad);
    }
  });

  it("refuses numeric names the C resolver would read as an IPv4 address", () => {
    for (const numeric of ["2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "169.254.0x4d.77", "1.2.3.4.", "10.1"]) {
      assert.equal(normalizeHost(numeric), undefined, numeric);
    }
    assert.equal(normalizeHost("1password.com"), "1password.com", "a leading digit is fine");
  });

  it("never allows loopback, link-local, unspecified, multicast or the IPv6 forms that carry IPv4", () => {
    for (const address of [
      "127.0.0.1",
      "0.0.0.0",
      "169.254.169.254",
      "169.254.77.77",
      "::ffff:169.254.77.77",
      "::ffff:a9fe:4d4d",
      "::1",
      "::",
      "fe80::1",
      "fe80::1%eth0",
      "ff02::1",
      "224.0.0.1",
      "255.255.255.255",
      "64:ff9b::a9fe:a9fe",
      "2002:a9fe:a9fe::1",
      "::169.254.169.254",
      "not-an-address",
    ]) {
      assert.equal(allow.verdict(address), "never", address);
    }
  });

  it("allows a private address only inside an allowed block", () => {
    assert.equal(allow.verdict("10.77.1.2"), undefined);
    assert.equal(allow.verdict("::ffff:10.77.1.2"), undefined);
    assert.equal(allow.verdict("fd00:77::5"), undefined);
    for (const address of ["10.78.0.1", "192.168.1.1", "172.16.0.1", "100.64.0.1", "fd00:78::1", "::ffff:192.168.0.1"]) {
      assert.equal(allow.verdict(address), "private", address);
    }
    assert.equal(allow.verdict("93.184.216.34"), undefined, "a public address is fine when its name is allowed");
    assert.equal(allow.verdict("2606:4700::1"), undefined);
    assert.ok(allow.allowsLiteral("10.77.0.9"));
    assert.ok(!allow.allowsLiteral("93.184.216.34"), "an IP literal needs a block");
  });

  it("refuses, at start, blocks that cover what is never allowed, and what is no entry", () => {
    for (const entry of [
      "169.254.0.0/16",
      "169.254.169.254",
      "169.0.0.0/8",
      "128.0.0.0/1",
      "0.0.0.0/0",
      "127.0.0.1",
      "::/0",
      "fe80::/10",
      "::ffff:0:0/96",
      "224.0.0.0/4",
    ]) {
      assert.throws(() => EgressAllowList.parse(entry), /never allowed/, entry);
    }
    for (const entry of ["*.com", "*", "a..b", "10.0.0.1/8", "10.0.0.0/33", "http://x.example"]) {
      assert.throws(() => EgressAllowList.parse(entry), Error, entry);
    }
    assert.deepEqual(allow.cidrs, ["10.77.0.0/16", "fd00:77::/64"]);
  });
});

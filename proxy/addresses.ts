import { isIP } from "node:net";

const COLON = 0x3a;
const DOT = 0x2e;

/**
 * Writes `address` into `out` as 16 bytes, IPv4 as an IPv4-mapped IPv6 address (RFC 4291
 * §2.5.5.2), so that one comparison serves both families and a dual-stack socket's
 * `::ffff:127.0.0.1` is the same address as `127.0.0.1`. False when it is no IP address.
 * Allocates nothing: the proxy asks this of every request's peer.
 */
function toBytes(address: string, out: Uint8Array): boolean {
  const family = isIP(address);
  if (family === 4) {
    out.fill(0, 0, 10);
    out[10] = 0xff;
    out[11] = 0xff;
    writeIPv4(address, 0, address.length, out, 12);
    return true;
  }
  if (family !== 6) return false;
  // isIP has checked the syntax (RFC 4291 §2.2), so this only has to place the groups.
  const zone = address.indexOf("%");
  const end = zone < 0 ? address.length : zone;
  let at = 0;
  let gap = -1;
  let i = 0;
  if (address.charCodeAt(0) === COLON && address.charCodeAt(1) === COLON) {
    gap = 0;
    i = 2;
  }
  while (i < end) {
    let j = i;
    let dotted = false;
    for (; j < end && address.charCodeAt(j) !== COLON; j++) if (address.charCodeAt(j) === DOT) dotted = true;
    if (dotted) {
      writeIPv4(address, i, j, out, at);
      at += 4;
      break;
    }
    let group = 0;
    for (let k = i; k < j; k++) group = group * 16 + hexValue(address.charCodeAt(k));
    out[at++] = group >> 8;
    out[at++] = group & 0xff;
    i = j + 1;
    if (i < end && address.charCodeAt(i) === COLON) {
      gap = at;
      i++;
    }
  }
  if (gap >= 0) {
    // "::" stands for as many zero groups as the other groups leave room for.
    const tail = at - gap;
    out.copyWithin(16 - tail, gap, at);
    out.fill(0, gap, 16 - tail);
  }
  return true;
}

function writeIPv4(text: string, from: number, to: number, out: Uint8Array, at: number): void {
  let octet = 0;
  for (let k = from; k < to; k++) {
    const c = text.charCodeAt(k);
    if (c === DOT) {
      out[at++] = octet;
      octet = 0;
    } else {
      octet = octet * 10 + (c - 0x30);
    }
  }
  out[at] = octet;
}

function hexValue(c: number): number {
  return c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x57;
}

function isIPv4Mapped(b: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

/** `has()` is synchronous and not reentrant, so one buffer serves every call. */
const scratch = new Uint8Array(16);

interface Block {
  bytes: Uint8Array;
  /** Prefix length over the 16-byte form (an IPv4 /n is /96+n). */
  bits: number;
}

/**
 * A set of address blocks in CIDR notation (RFC 4632 §3.1 for IPv4, RFC 4291 §2.3 for IPv6),
 * parsed once at start: `has()` compares bytes and allocates nothing.
 */
export class AddressSet {
  static readonly empty = new AddressSet([]);

  private constructor(private readonly blocks: readonly Block[]) {}

  /**
   * Parses a comma- or space-separated list such as `127.0.0.1/32, ::1, 10.0.0.0/8`; an address
   * without a prefix is that one address. Throws on anything else, and on bits set past the
   * prefix (`10.1.2.3/8`), which is more likely a typo than a wish.
   */
  static parse(list: string): AddressSet {
    const blocks: Block[] = [];
    for (const entry of list.split(/[\s,]+/).filter(Boolean)) {
      const slash = entry.indexOf("/");
      const address = slash < 0 ? entry : entry.slice(0, slash);
      const family = isIP(address);
      const max = family === 4 ? 32 : 128;
      const prefix = slash < 0 ? max : /^\d{1,3}$/.test(entry.slice(slash + 1)) ? Number(entry.slice(slash + 1)) : NaN;
      if (family === 0 || address.includes("%") || !(prefix <= max)) throw new Error(`${JSON.stringify(entry)} is not an address or CIDR block`);
      const bytes = new Uint8Array(16);
      toBytes(address, bytes);
      const bits = family === 4 ? 96 + prefix : prefix;
      if (!bytes.every((byte, i) => (byte & ~maskOf(bits, i) & 0xff) === 0)) {
        throw new Error(`${JSON.stringify(entry)} has address bits set past its /${prefix} prefix`);
      }
      blocks.push({ bytes, bits });
    }
    return blocks.length === 0 ? AddressSet.empty : new AddressSet(blocks);
  }

  get size(): number {
    return this.blocks.length;
  }

  has(address: string): boolean {
    if (this.blocks.length === 0 || !toBytes(address, scratch)) return false;
    for (let i = 0; i < this.blocks.length; i++) if (within(scratch, this.blocks[i]!)) return true;
    return false;
  }
}

/** The mask of byte `i` under a prefix of `bits`. */
function maskOf(bits: number, i: number): number {
  const left = bits - i * 8;
  return left >= 8 ? 0xff : left <= 0 ? 0 : (0xff << (8 - left)) & 0xff;
}

function within(address: Uint8Array, block: Block): boolean {
  const whole = block.bits >> 3;
  for (let i = 0; i < whole; i++) if (address[i] !== block.bytes[i]) return false;
  if (whole === 16) return true;
  const mask = maskOf(block.bits, whole);
  return (address[whole]! & mask) === block.bytes[whole];
}

/**
 * The key a client's address is rate-limited under: an IPv4 address itself, an IPv6 address by
 * its /64. A /64 is one link's subnet (RFC 4291 §2.5.4, 64-bit interface IDs), and every host on
 * it can take any address in it at will (RFC 8981 temporary addresses), so one address per
 * bucket would let one client have 2^64 buckets.
 */
export function rateLimitKey(address: string): string {
  const b = new Uint8Array(16);
  if (!toBytes(address, b)) return address;
  if (isIPv4Mapped(b)) return `${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  const groups: string[] = [];
  for (let i = 0; i < 8; i += 2) groups.push(((b[i]! << 8) | b[i + 1]!).toString(16));
  return `${groups.join(":")}::/64`;
}

import { Transform, type TransformCallback } from "node:stream";

const BLOCK = 512;

/**
 * Passes a tar stream through and counts the bytes of the regular files in it: a copy's size
 * (apparent, as a user counts it) learnt from the copy itself, where no `du` can look. Reads each
 * header's size field (octal, or base-256 for large files) and a pax header's `size` record.
 */
export class TarSize extends Transform {
  bytes = 0;
  private pending: Buffer = Buffer.alloc(0);
  /** Bytes of the current entry's body (padded to blocks) still to pass before the next header. */
  private skip = 0;
  /** The body of a pax extended header being read, and the size it gives the next entry. */
  private pax: Buffer[] | undefined;
  private paxLeft = 0;
  private paxSize: number | undefined;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    let at = 0;
    for (;;) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, this.pending.length - at);
        if (this.pax && this.paxLeft > 0) {
          const take = Math.min(n, this.paxLeft);
          this.pax.push(this.pending.subarray(at, at + take));
          this.paxLeft -= take;
        }
        at += n;
        this.skip -= n;
        if (this.skip > 0) break;
        if (this.pax) {
          this.paxSize = paxSize(Buffer.concat(this.pax));
          this.pax = undefined;
        }
      }
      if (this.pending.length - at < BLOCK) break;
      this.header(this.pending.subarray(at, at + BLOCK));
      at += BLOCK;
    }
    this.pending = this.pending.subarray(at);
    done(null, chunk);
  }

  private header(block: Buffer): void {
    if (block.every((b) => b === 0)) return; // the end-of-archive blocks
    const type = String.fromCharCode(block[156]!);
    const size = this.paxSize ?? sizeField(block.subarray(124, 136));
    if (type === "x") {
      this.paxLeft = sizeField(block.subarray(124, 136));
      this.pax = this.paxLeft > 0 ? [] : undefined;
      this.skip = padded(this.paxLeft);
      return;
    }
    this.paxSize = undefined;
    if (type === "0" || type === "\0" || type === "7") this.bytes += size;
    // Links, directories and devices have no body; every other entry's body is skipped.
    if (!["1", "2", "3", "4", "5", "6"].includes(type))
      this.skip = padded(type === "g" || type === "L" || type === "K" ? sizeField(block.subarray(124, 136)) : size);
  }
}

const padded = (n: number) => Math.ceil(n / BLOCK) * BLOCK;

function sizeField(field: Buffer): number {
  if (field[0]! & 0x80) {
    let n = 0;
    for (let i = 1; i < field.length; i++) n = n * 256 + field[i]!;
    return n;
  }
  return parseInt(field.toString("ascii").replace(/\0.*$/s, "").trim() || "0", 8);
}

/** Pax records are `<length> <key>=<value>\n`. */
function paxSize(body: Buffer): number | undefined {
  const match = /(?:^|\n)\d+ size=(\d+)\n/.exec(body.toString("utf8"));
  return match ? Number(match[1]) : undefined;
}

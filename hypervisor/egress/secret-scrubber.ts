import { Transform, type TransformCallback } from "node:stream";

/**
 * The mask that replaces a secret: as long as the secret, so a Content-Length stays right and
 * nothing of the secret (not even its length's worth of characters) survives.
 */
export function maskOf(secret: Buffer): Buffer {
  return Buffer.alloc(secret.length, "*");
}

/** A header value with every occurrence of the secret masked. */
export function scrubText(text: string, secret: string): string {
  return text.split(secret).join("*".repeat(secret.length));
}

/**
 * Masks every occurrence of `secret` in a byte stream, also one split across chunks, while
 * delaying nothing that cannot be the start of the secret: a chunk is passed on at once except
 * for its longest tail that is a prefix of the secret, held until the next chunk says whether the
 * secret goes on. A server-sent event ends in a line break (never part of a secret), so each event
 * passes as it comes. Memory: one chunk plus less than the secret's length.
 */
export class SecretScrubber extends Transform {
  private held: Buffer = Buffer.alloc(0);
  private readonly mask: Buffer;

  constructor(private readonly secret: Buffer) {
    super();
    this.mask = maskOf(secret);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    const buf = this.held.length ? Buffer.concat([this.held, chunk]) : chunk;
    const parts: Buffer[] = [];
    let from = 0;
    for (let at = buf.indexOf(this.secret, 0); at !== -1; at = buf.indexOf(this.secret, from)) {
      parts.push(buf.subarray(from, at), this.mask);
      from = at + this.secret.length;
    }
    const keep = this.partialTail(buf, from);
    parts.push(buf.subarray(from, buf.length - keep));
    // A copy: `buf` may be the caller's chunk, which the stream may reuse.
    this.held = Buffer.from(buf.subarray(buf.length - keep));
    const out = Buffer.concat(parts);
    done(null, out.length ? out : undefined);
  }

  override _flush(done: TransformCallback): void {
    // The stream ended inside what could have been the secret: it was not, so it passes.
    done(null, this.held.length ? this.held : undefined);
  }

  /** Length of the longest tail of buf (starting at `from` or later) that is a proper prefix of the secret. */
  private partialTail(buf: Buffer, from: number): number {
    const max = Math.min(this.secret.length - 1, buf.length - from);
    for (let k = max; k > 0; k--) {
      if (buf.compare(this.secret, 0, k, buf.length - k, buf.length) === 0) return k;
    }
    return 0;
  }
}

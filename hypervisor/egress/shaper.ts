import { Transform, type TransformCallback } from "node:stream";

interface Bucket {
  /** Bytes that may pass now; below zero, the debt the next chunk waits out. */
  tokens: number;
  at: number;
  /** Streams using it. */
  streams: number;
  /** Set when the last stream went: the bucket goes once it would be full again, never sooner. */
  forget?: NodeJS.Timeout;
}

/**
 * Each sandbox's bytes per second through the forward proxy, every connection of it and both
 * ways together (one token bucket per sandbox, a second's worth of burst). The gateway has one event loop for
 * everyone: without this, one sandbox downloading on all its connections takes it, and every
 * other sandbox's calls (and the proxy's requests beside it) wait behind it.
 *
 * A chunk over the budget is held until its debt is paid, inside the pipe: the pipe's own
 * backpressure then stops reading from the socket, so nothing buffers beyond a stream's highWaterMark.
 */
export class SandboxShaper {
  private readonly buckets = new Map<string, Bucket>();

  constructor(private readonly bytesPerSecond: number) {}

  /** A stream to pipe one direction of one of `sandbox`'s calls through. */
  stream(sandbox: string): Transform {
    let bucket = this.buckets.get(sandbox);
    if (!bucket) {
      bucket = { tokens: this.bytesPerSecond, at: performance.now(), streams: 0 };
      this.buckets.set(sandbox, bucket);
    }
    bucket.streams++;
    clearTimeout(bucket.forget);
    const owned = bucket;
    let timer: NodeJS.Timeout | undefined;
    const shaper = this;
    return new Transform({
      transform(chunk: Buffer, _encoding, callback: TransformCallback) {
        const wait = shaper.take(owned, chunk.length);
        if (wait <= 0) return callback(null, chunk);
        timer = setTimeout(() => callback(null, chunk), wait);
      },
      destroy(err, callback) {
        clearTimeout(timer);
        // Kept until refilled: closing every connection between calls must not buy a fresh burst.
        if (--owned.streams === 0) {
          owned.forget = setTimeout(() => shaper.buckets.get(sandbox) === owned && shaper.buckets.delete(sandbox), shaper.refillMs(owned));
          owned.forget.unref();
        }
        callback(err);
      },
    });
  }

  /** Until the bucket is full again. */
  private refillMs(bucket: Bucket): number {
    return Math.max(0, ((this.bytesPerSecond - bucket.tokens) / this.bytesPerSecond) * 1000);
  }

  /** Takes `bytes` from the bucket; how many ms they must wait (0: none). */
  private take(bucket: Bucket, bytes: number): number {
    const now = performance.now();
    bucket.tokens = Math.min(this.bytesPerSecond, bucket.tokens + ((now - bucket.at) / 1000) * this.bytesPerSecond);
    bucket.at = now;
    bucket.tokens -= bytes;
    return bucket.tokens >= 0 ? 0 : (-bucket.tokens / this.bytesPerSecond) * 1000;
  }
}

import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { describe, it } from "node:test";
import { SecretScrubber } from "./secret-scrubber.js";

async function scrub(secret: string, chunks: string[]): Promise<{ text: string; pieces: string[] }> {
  const pieces: string[] = [];
  const scrubber = new SecretScrubber(Buffer.from(secret));
  // Flowing: each piece as the scrubber pushes it, as a response would send it.
  scrubber.on("data", (piece: Buffer) => pieces.push(piece.toString()));
  const ended = new Promise((resolve) => scrubber.on("end", resolve));
  Readable.from(chunks.map((c) => Buffer.from(c))).pipe(scrubber);
  await ended;
  return { text: pieces.join(""), pieces };
}

describe("SecretScrubber", () => {
  it("masks the secret whole, split across chunks, repeated and overlapping itself", async () => {
    assert.equal((await scrub("abab", ["xxababyy"])).text, "xx****yy");
    assert.equal((await scrub("secret", ["my se", "cr", "et is secret"])).text, "my ****** is ******");
    assert.equal((await scrub("aab", ["a", "a", "a", "b"])).text, "a***");
    assert.equal((await scrub("abab", ["ababab"])).text, "****ab");
    // Every split of a text holding the secret twice.
    const text = "head:KEY123 and KEY123:tail";
    for (let i = 0; i <= text.length; i++) {
      for (let j = i; j <= text.length; j++) {
        const got = (await scrub("KEY123", [text.slice(0, i), text.slice(i, j), text.slice(j)].filter(Boolean))).text;
        assert.equal(got, "head:****** and ******:tail", `split at ${i}, ${j}`);
      }
    }
  });

  it("holds back only what could still be the secret's start, and lets it go at the end", async () => {
    const { pieces } = await scrub("KEY123", ["data: one\n\n", "data: K", "EY9\n\n", "tail KE"]);
    assert.deepEqual(pieces, ["data: one\n\n", "data: ", "KEY9\n\n", "tail ", "KE"]);
  });
});

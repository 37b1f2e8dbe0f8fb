import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Transform } from "node:stream";
import { SandboxShaper } from "./shaper.js";

const RATE = 64 * 1024;

/** When `stream` passes its first chunk on, in ms after `since`. */
function firstChunk(stream: Transform, since: number): Promise<number> {
  return new Promise((resolve) => stream.once("data", () => resolve(performance.now() - since)));
}

// The forward proxy's rate is one bucket per sandbox, whatever the connection: a sandbox's second
// connection shares what its first spent; another sandbox has its own.
describe("the gateway's rate per sandbox", () => {
  it("holds a sandbox's bytes past its rate on any of its connections, and never another sandbox's", async () => {
    const shaper = new SandboxShaper(RATE);
    const [first, second, other] = [shaper.stream("alice/a"), shaper.stream("alice/a"), shaper.stream("bob/a")];
    const at = performance.now();
    const arrived = [first, second, other].map((s) => firstChunk(s, at));
    first.write(Buffer.alloc(RATE)); // a second's worth: the whole burst
    second.write(Buffer.alloc(RATE)); // alice's bucket is empty: a second's debt
    other.write(Buffer.alloc(RATE)); // bob's bucket is full
    const [a1, a2, b] = await Promise.all(arrived);
    assert.ok(a2! >= 900, `alice's second connection waited for her bucket: ${a2!.toFixed(0)} ms`);
    assert.ok(a1! < a2! && b! < a2!, `alice's first (${a1!.toFixed(0)} ms) and bob's (${b!.toFixed(0)} ms) passed before it`);
    for (const s of [first, second, other]) s.destroy();
  });

  it("keeps a sandbox's bucket after its last stream until it is full again: closing every connection buys no fresh burst", async () => {
    const shaper = new SandboxShaper(RATE);
    const spent = shaper.stream("carol/a");
    spent.resume();
    spent.write(Buffer.alloc(RATE));
    spent.destroy();
    const next = shaper.stream("carol/a");
    const held = firstChunk(next, performance.now());
    next.write(Buffer.alloc(RATE));
    assert.ok((await held) >= 900, "the next stream waits out what the closed one spent");
    next.destroy();
  });
});

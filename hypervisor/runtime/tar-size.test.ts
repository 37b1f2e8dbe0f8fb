import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { after, describe, it } from "node:test";
import { TarSize } from "./tar-size.js";

/** Counts what GNU tar writes of `dir` in `format`, fed through in chunks of `chunk` bytes. */
async function counted(dir: string, format: string, chunk: number): Promise<{ bytes: number; passed: number }> {
  const tar = spawn("tar", [`--format=${format}`, "-C", dir, "-cf", "-", "."], { stdio: ["ignore", "pipe", "inherit"] });
  const size = new TarSize();
  let passed = 0;
  const sink = new Writable({
    write(c: Buffer, _e, done) {
      passed += c.length;
      done();
    },
  });
  const rechunk = async function* (source: AsyncIterable<Buffer>) {
    for await (const c of source) for (let i = 0; i < c.length; i += chunk) yield c.subarray(i, i + chunk);
  };
  await pipeline(tar.stdout, rechunk, size, sink);
  return { bytes: size.bytes, passed };
}

describe("the bytes of the files in a tar stream", () => {
  const dir = mkdtempSync(join(tmpdir(), "hv-tar-size-"));
  after(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, "sub", "x".repeat(120)), { recursive: true });
  writeFileSync(join(dir, "a"), "hello");
  writeFileSync(join(dir, "sub", "x".repeat(120), `${"y".repeat(150)}.bin`), Buffer.alloc(70_001, 7));
  writeFileSync(join(dir, "empty"), "");
  writeFileSync(join(dir, "sub", "b"), Buffer.alloc(512, 1));
  symlinkSync("a", join(dir, "link"));
  const files = 5 + 70_001 + 0 + 512;

  // Long names: pax records (what Podman writes) and GNU long-name entries, each with a body to skip.
  for (const format of ["pax", "gnu"]) {
    for (const chunk of [1, 333, 65_536]) {
      it(`counts regular files only, ${format} format, read ${chunk} bytes at a time, and passes every byte on`, async () => {
        const { bytes, passed } = await counted(dir, format, chunk);
        assert.equal(bytes, files);
        assert.equal(passed % 512, 0);
        assert.ok(passed > bytes);
      });
    }
  }
});

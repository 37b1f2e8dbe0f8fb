import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { openDatabase } from "../db/database.js";
import { DecoyCredentials } from "./decoy-credentials.js";

describe("DecoyCredentials", () => {
  it("gives each name the same decoys on every call and after a restart, another install other ones", () => {
    const db = openDatabase(":memory:");
    const first = DecoyCredentials.of(db).for("alice");
    assert.deepEqual(DecoyCredentials.of(db).for("alice"), first, "the key is kept in the database");
    assert.notDeepEqual(DecoyCredentials.of(db).for("alicf"), first);
    assert.notDeepEqual(DecoyCredentials.of(openDatabase(":memory:")).for("alice"), first, "a per-install key");
  });

  it("mostly offers one credential, sometimes two or three, of authenticators' ID lengths", () => {
    const decoys = DecoyCredentials.of(openDatabase(":memory:"));
    const counts = [0, 0, 0, 0];
    const lengths = new Set<number>();
    for (let i = 0; i < 2000; i++) {
      const offered = decoys.for(`user-${i}`);
      counts[offered.length]! += 1;
      for (const c of offered) lengths.add(Buffer.from(c.id, "base64url").length);
    }
    assert.equal(counts[0], 0);
    assert.ok(counts[1]! > 1200 && counts[2]! > 350 && counts[3]! > 40, `counts ${counts.join(" ")}`);
    assert.deepEqual(
      [...lengths].sort((a, b) => a - b),
      [16, 20, 32, 64],
    );
  });
});

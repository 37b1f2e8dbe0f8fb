import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CHALLENGE_TTL_MS, ChallengeStore } from "./challenge-store.js";

// Issue, single use, kinds and expiry: test/integration/auth-sessions.test.ts. These are about eviction.

const login = { kind: "login", username: undefined } as const;

describe("ChallengeStore", () => {
  it("makes a client past its share lose its own oldest challenge, nobody else's", () => {
    const store = new ChallengeStore(Date.now, { total: 100, perClient: 3 });
    store.issue("victim", login, "v");
    for (let i = 0; i < 50; i++) store.issue(`flood-${i}`, login, "attacker");
    assert.equal(store.size, 4);
    assert.equal(store.take("flood-46", "login"), undefined, "the attacker's older ones went");
    assert.deepEqual(store.take("flood-49", "login"), login);
    assert.deepEqual(store.take("victim", "login"), login);
  });

  it("when full, evicts from the client holding the most, so a single pending challenge survives floods from many clients", () => {
    const store = new ChallengeStore(Date.now, { total: 50, perClient: 4 });
    store.issue("victim", login, "v");
    for (let i = 0; i < 1000; i++) store.issue(`flood-${i}`, login, `attacker-${i % 40}`);
    assert.equal(store.size, 50);
    assert.deepEqual(store.take("victim", "login"), login, "the victim's challenge is still there");
    assert.deepEqual(store.take("flood-999", "login"), login, "the newest challenge is always kept");
  });

  it("drops expired challenges before evicting live ones", () => {
    let now = 0;
    const store = new ChallengeStore(() => now, { total: 3, perClient: 3 });
    store.issue("old-1", login, "a");
    store.issue("old-2", login, "a");
    now = 1;
    store.issue("victim", login, "v");
    now = CHALLENGE_TTL_MS + 0.5;
    store.issue("new-1", login, "b");
    store.issue("new-2", login, "b");
    assert.deepEqual(store.take("victim", "login"), login);
  });
});

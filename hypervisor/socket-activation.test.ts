import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ConfigError } from "./config.js";
import { takeInheritedSockets } from "./socket-activation.js";

const PID = 4242;

describe("socket activation (sd_listen_fds(3))", () => {
  it("names the passed descriptors from 3 on, in LISTEN_FDNAMES order", () => {
    const env = { LISTEN_PID: String(PID), LISTEN_FDS: "2", LISTEN_FDNAMES: "operator:public" };
    assert.deepEqual(takeInheritedSockets(env, PID), { operator: 3, public: 4 });
  });

  it("removes the variables, so no child is told of descriptors that are not its own", () => {
    for (const env of [
      { LISTEN_PID: String(PID), LISTEN_FDS: "1", LISTEN_FDNAMES: "public", PATH: "/bin" },
      { LISTEN_PID: "1", LISTEN_FDS: "1", LISTEN_FDNAMES: "public", PATH: "/bin" },
    ]) {
      takeInheritedSockets(env, PID);
      assert.deepEqual(env, { PATH: "/bin" });
    }
  });

  it("takes nothing meant for another process or when nothing was passed", () => {
    assert.deepEqual(takeInheritedSockets({ LISTEN_PID: String(PID + 1), LISTEN_FDS: "1", LISTEN_FDNAMES: "public" }, PID), {});
    assert.deepEqual(takeInheritedSockets({ LISTEN_FDS: "1", LISTEN_FDNAMES: "public" }, PID), {});
    assert.deepEqual(takeInheritedSockets({}, PID), {});
  });

  it("takes one listener and leaves the other to bind its own address", () => {
    assert.deepEqual(takeInheritedSockets({ LISTEN_PID: String(PID), LISTEN_FDS: "1", LISTEN_FDNAMES: "public" }, PID), { public: 3 });
  });

  it("refuses names it does not know, repeated names and counts that do not match, naming the variable", () => {
    const cases: [Record<string, string>, string][] = [
      [{ LISTEN_FDS: "1", LISTEN_FDNAMES: "hypervisor.socket" }, "LISTEN_FDNAMES"],
      [{ LISTEN_FDS: "2", LISTEN_FDNAMES: "public:public" }, "LISTEN_FDNAMES"],
      [{ LISTEN_FDS: "2", LISTEN_FDNAMES: "public" }, "LISTEN_FDNAMES"],
      [{ LISTEN_FDS: "1" }, "LISTEN_FDNAMES"],
      [{ LISTEN_FDS: "two", LISTEN_FDNAMES: "public:operator" }, "LISTEN_FDS"],
      [{ LISTEN_FDS: "0", LISTEN_FDNAMES: "" }, "LISTEN_FDS"],
    ];
    for (const [vars, variable] of cases) {
      assert.throws(
        () => takeInheritedSockets({ LISTEN_PID: String(PID), ...vars }, PID),
        (err: unknown) => err instanceof ConfigError && err.variable === variable,
        JSON.stringify(vars),
      );
    }
  });
});

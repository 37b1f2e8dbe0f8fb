// DESIGN §5a: where the process runtime cannot contain sandboxes, the daemon says so and, with
// open registration, starts only once the operator accepts it. A host without bubblewrap is
// stood for by pointing the runtime at a missing binary.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { ConfigError } from "../../hypervisor/config.js";
import { ProcessRuntime } from "../../hypervisor/runtime/process/process-runtime.js";
import { bootDaemon, sandboxDataDir, tempDir } from "../helpers/daemon.js";
import { testUser } from "../helpers/run-id.js";

const withoutBwrap = (stateDir: string) =>
  new ProcessRuntime({ recordsDir: join(stateDir, "sandboxes"), dataDir: sandboxDataDir(stateDir), bwrap: join(stateDir, "no-such-bwrap") });

describe("a daemon that cannot contain process sandboxes", () => {
  const dirs: { remove(): void }[] = [];
  after(() => dirs.forEach((d) => d.remove()));
  const stateDir = () => {
    const dir = tempDir();
    dirs.push(dir);
    return dir.path;
  };

  it("refuses open registration without HYPERVISOR_PROCESS_UNCONTAINED=accept, naming the variable and why", async () => {
    const state = stateDir();
    await assert.rejects(
      bootDaemon({ stateDir: state, runtime: withoutBwrap(state), env: { HYPERVISOR_REGISTRATION: "open" } }),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.variable === "HYPERVISOR_PROCESS_UNCONTAINED" &&
        /expected accept/.test(err.message) &&
        /bubblewrap is not installed/.test(err.message),
    );
  });

  for (const [why, env] of [
    ["with HYPERVISOR_PROCESS_UNCONTAINED=accept", { HYPERVISOR_REGISTRATION: "open", HYPERVISOR_PROCESS_UNCONTAINED: "accept" }],
    ["with invite-only registration", { HYPERVISOR_REGISTRATION: "invite" }],
  ] as const) {
    it(`starts ${why}, and runs sandboxes uncontained as the daemon's uid`, async () => {
      const state = stateDir();
      const t = await bootDaemon({ stateDir: state, runtime: withoutBwrap(state), env });
      const user = testUser(`uncontained-${env.HYPERVISOR_REGISTRATION}`);
      try {
        assert.equal((await t.operator.post("/users", { name: user })).status, 201);
        const target = await t.daemon.services.manager.ensure(user, "live");
        const info = (await t.daemon.services.runtime.inspect(user, t.daemon.services.routing.slotOf(user, "live")))!;
        assert.ok(target.endpoint.port > 0);
        const uid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${info.id}/status`, "latin1"))![1]);
        assert.equal(uid, process.getuid!());
      } finally {
        await t.daemon.services.manager.stop(user, "live").catch(() => undefined);
        await t.close();
      }
    });
  }
});

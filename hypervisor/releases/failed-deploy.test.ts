import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { controlPlane, stopClock, track } from "../../test/helpers/control-plane.js";

describe("a failed deploy", () => {
  it("leaves dev on the new generation, says so with the way back, and swap refuses it; live is untouched", async (t) => {
    const cp = await controlPlane(t, { users: ["alice"], config: { startTimeoutMs: 3000 } });
    const g2 = cp.addGeneration("2");
    const live = await cp.manager.ensure("alice", "live");
    const clock = stopClock(t);
    cp.runtime.setHealthy("alice", "b", false);
    const deploy = track(cp.releases.deploy(g2, ["alice"]));
    await clock.runUntil(deploy.done, 50);
    const [result] = await deploy.promise;
    assert.equal(result?.ok, false);
    assert.equal(result?.error?.code, "start_timeout");
    assert.match(
      result!.error!.message,
      new RegExp(
        `last answered: HTTP 503: set unhealthy by the test; live is unchanged, dev stays on generation ${g2} and swap refuses it while it is unhealthy ` +
          `\\(see hypervisorctl logs alice dev; hypervisorctl deploy ${cp.g1} --users alice puts generation ${cp.g1} back\\)$`,
      ),
    );
    assert.equal(cp.userStore.slot("alice", "b")?.generationId, g2, "dev is where the message says");
    assert.equal(cp.generations.require(g2).state, "candidate", "one user's failure does not judge the generation");
    assert.equal(await cp.manager.ensure("alice", "live"), live, "live was not touched");

    const swap = track(cp.releases.swap(["alice"], false));
    await clock.runUntil(swap.done, 50);
    const [swapped] = await swap.promise;
    assert.equal(swapped?.error?.code, "unhealthy_target");
    assert.equal(cp.routing.generationOf("alice", "live"), cp.g1);

    // The way back the message names puts dev on the previous generation again.
    cp.runtime.setHealthy("alice", "b", true);
    const [back] = await cp.releases.deploy(cp.g1, ["alice"]);
    assert.equal(back?.ok, true, JSON.stringify(back));
    assert.equal(cp.userStore.slot("alice", "b")?.generationId, cp.g1);
  });
});

// The runbook rehearsal (test/host/rehearsal.ts, `npm run rehearsal`) as part of the suite, so CI
// proves deploy/RUNBOOK.md on a Debian 13 box with systemd at every change. It needs root,
// debootstrap and systemd-nspawn (scripts/install-deps.sh) and Debian's mirror; in CI a missing
// one fails, elsewhere the suite is skipped with the reason.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { repoRoot } from "../helpers/paths.js";

function skipReason(): string | false {
  const missing = ["debootstrap", "systemd-nspawn"].filter((tool) => spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0);
  const reason =
    process.getuid?.() !== 0 ? "the rehearsal needs root" : missing.length ? `${missing.join(" and ")} not installed (scripts/install-deps.sh)` : false;
  if (reason && process.env.CI === "true") throw new Error(`${reason}, and CI=true requires the rehearsal to run`);
  return reason;
}

const REPORT = join(repoRoot, "var/rehearsal/report.md");

describe("deploy/RUNBOOK.md rehearsed on Debian 13 under systemd", { skip: skipReason() }, () => {
  it("passes every gate of the rehearsal", { timeout: 60 * 60_000 }, async () => {
    const child = spawn(process.execPath, [join(repoRoot, "dist/test/host/rehearsal.js")], {
      stdio: ["ignore", "inherit", "inherit"],
      env: { ...process.env, HYPERVISOR_REHEARSAL_REPORT: REPORT },
    });
    const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
    const report = readFileSync(REPORT, "utf8");
    const failed = report.split("\n").filter((l) => /^\| [✗–] \|/.test(l));
    assert.deepEqual(failed, [], `every gate passes (${REPORT})`);
    assert.equal(code, 0);
  });
});

import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { checkHost, HostChecks } from "./host-checks.js";

const dir = mkdtempSync(join(tmpdir(), "hv-host-checks-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A file root whose /sys/fs/cgroup/cgroup.controllers lists these controllers (none: no file). */
function root(name: string, controllers?: string): string {
  const path = join(dir, name);
  mkdirSync(join(path, "sys/fs/cgroup"), { recursive: true });
  if (controllers !== undefined) writeFileSync(join(path, "sys/fs/cgroup/cgroup.controllers"), `${controllers}\n`);
  return path;
}

/** A systemctl that answers `is-active` as systemd does: the state on stdout, 0 only for active. */
function systemctl(name: string, state: string, exitCode: number): string {
  const path = join(dir, name);
  writeFileSync(path, `#!/bin/sh\n[ "$1 $2" = "is-active podman-auto-update.timer" ] || exit 9\necho ${state}\nexit ${exitCode}\n`);
  chmodSync(path, 0o755);
  return path;
}

describe("host checks", () => {
  it("finds nothing to report on a cgroup v2 host with the limit controllers and the timer off", async () => {
    const report = await checkHost({ root: root("good", "cpuset cpu io memory hugetlb pids rdma misc"), systemctl: systemctl("inactive", "inactive", 3) });
    assert.deepEqual(report, {
      cgroupControllers: ["cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"],
      missingControllers: [],
      autoUpdateTimer: "inactive",
      warnings: [],
    });
  });

  it("names each missing controller with the limit it would enforce", async () => {
    const report = await checkHost({ root: root("no-memcg", "cpuset cpu io"), systemctl: systemctl("masked", "inactive", 3) });
    assert.deepEqual(report.missingControllers, ["memory", "pids"]);
    assert.equal(report.warnings.length, 1);
    assert.match(report.warnings[0]!, /memory \(HYPERVISOR_SANDBOX_MEMORY\), pids \(HYPERVISOR_SANDBOX_PIDS\)/);
    assert.match(report.warnings[0]!, /cgroup_enable=memory/);
  });

  it("says limits cannot be verified without cgroup v2", async () => {
    const report = await checkHost({ root: root("v1"), systemctl: systemctl("inactive-2", "inactive", 3) });
    assert.equal(report.cgroupControllers, null);
    assert.match(report.warnings.join("\n"), /cgroup v2 is not mounted/);
  });

  it("reports an active auto-update timer", async () => {
    const report = await checkHost({ root: root("timer", "cpu memory pids"), systemctl: systemctl("active", "active", 0) });
    assert.equal(report.autoUpdateTimer, "active");
    assert.deepEqual(report.warnings.length, 1);
    assert.match(report.warnings[0]!, /podman-auto-update\.timer is active/);
  });

  it("tolerates a missing systemctl, a systemd that is not running, and a hung one", async () => {
    const base = { root: root("tolerant", "cpu memory pids") };
    const hung = join(dir, "hung");
    writeFileSync(hung, "#!/bin/sh\nexec sleep 10\n");
    chmodSync(hung, 0o755);
    const reports = await Promise.all([
      checkHost({ ...base, systemctl: join(dir, "no-such-systemctl") }),
      checkHost({ ...base, systemctl: systemctl("offline", "", 1) }),
      checkHost({ ...base, systemctl: hung, timeoutMs: 200 }),
    ]);
    for (const report of reports) {
      assert.equal(report.autoUpdateTimer, "unknown");
      assert.deepEqual(report.warnings, []);
    }
  });

  it("answers readiness from the last report without waiting, and checks again once it is stale", async () => {
    const cgroupRoot = root("changing", "cpu pids");
    const checks = new HostChecks({ root: cgroupRoot, systemctl: systemctl("inactive-3", "inactive", 3) }, 0);
    assert.equal(checks.latest(), undefined, "nothing before the first check has finished");
    const first = await checks.refresh();
    assert.deepEqual(first.missingControllers, ["memory"]);

    writeFileSync(join(cgroupRoot, "sys/fs/cgroup/cgroup.controllers"), "cpu memory pids\n");
    assert.deepEqual(checks.latest()?.missingControllers, ["memory"], "the stale report answers at once");
    const second = await checks.refresh();
    assert.deepEqual(second.missingControllers, []);
    assert.deepEqual(checks.latest()?.missingControllers, []);
  });
});

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { repoRoot } from "../helpers/paths.js";

const exec = promisify(execFile);

/**
 * The `open` mode's host rules made where /proc/sys is read-only, as the units'
 * ProtectKernelTunables= leaves it, with ip_forward as `forwarding` says. All of it in a network
 * and mount namespace of this test's own (`unshare -n -m`): the host's forwarding, rules and
 * /proc/sys are never touched, and everything goes with the namespace.
 */
async function openFenceUnderReadOnlySysctl(forwarding: "0" | "1"): Promise<string | null> {
  const fence = join(repoRoot, "dist/hypervisor/egress/fence.js");
  const script = [
    `import { EgressFence } from ${JSON.stringify(fence)};`,
    `const fence = new EgressFence("open", "10.77.0.1", "10.78.0.0/16");`,
    `const why = (await fence.address()) ?? (await fence.up(3128));`,
    `process.stdout.write(JSON.stringify(why ?? null));`,
  ].join("\n");
  const shell = [
    "ip link set lo up",
    `echo ${forwarding} > /proc/sys/net/ipv4/ip_forward`,
    "mount --bind /proc/sys /proc/sys",
    "mount -o remount,bind,ro /proc/sys",
    // The namespace's forwarding can no longer be written: proves the mount holds.
    "! (echo 1 > /proc/sys/net/ipv4/ip_forward) 2>/dev/null || { echo 'proc/sys still writable' >&2; exit 3; }",
    'exec "$0" --input-type=module -e "$1"',
  ].join(" && ");
  const { stdout } = await exec("unshare", ["-n", "-m", "--", "sh", "-c", shell, process.execPath, script], { timeout: 30_000 });
  return JSON.parse(stdout) as string | null;
}

// A Podman host has forwarding on already, and under the units the daemon cannot write /proc/sys:
// `open` mode used to write ip_forward unconditionally, so it failed to start under a unit.
describe("open egress where /proc/sys is read-only (the units' ProtectKernelTunables=)", () => {
  it("makes its rules when forwarding is on already", async () => {
    assert.equal(await openFenceUnderReadOnlySysctl("1"), null);
  });

  it("says that net.ipv4.ip_forward must be set in the host's sysctl when it is off", async () => {
    const why = await openFenceUnderReadOnlySysctl("0");
    assert.match(why ?? "", /net\.ipv4\.ip_forward=1 .*set it in the host's sysctl/);
  });
});

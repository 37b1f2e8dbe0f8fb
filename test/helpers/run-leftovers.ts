// What a whole test run's processes may leave in the kernel after their own cleanup: a process
// sandbox's cgroups outlive its stop (they go with the sandbox's removal, which a test that only
// stops its daemon never asks for), and a Podman suite's fence chains are made again by a daemon
// still closing when the suite's own cleanup ran, and a test process killed before its `after`
// leaves its loop file systems mounted. scripts/run-tests.mjs calls this after the
// last file, with the ids its test processes wrote down: only what is named after them goes.
import { removeSandboxGroups } from "./cgroups.js";
import { egressAddress } from "./daemon.js";
import { removeRunLoopFs } from "./loop-fs.js";
import { removePodmanFence } from "../../hypervisor/runtime/podman-fence.js";

export async function removeRunLeftovers(ids: string[]): Promise<void> {
  for (const id of ids) {
    await removeSandboxGroups(`${id}-`);
    await removePodmanFence(egressAddress(id)).catch(() => undefined);
    if (process.getuid?.() === 0) removeRunLoopFs(id);
  }
}

import { PRLIMIT, SETPRIV, type Bubblewrap } from "./bubblewrap.js";
import type { DiskMethod } from "./disk-quota.js";
import { executable } from "./files.js";
import type { SandboxNetworks } from "./netns.js";
import { PROBE_UID } from "./uids.js";

/** How far this host lets the runtime confine its sandboxes (DESIGN §5a), found once at start. */
export interface Containment {
  /** Own mount, pid, ipc and uts namespaces; only the data dir writable, the command's files read-only. */
  namespaces: boolean;
  /** Each sandbox runs as a uid of its own (the daemon is root); otherwise as the daemon's uid. */
  ownUid: boolean;
  /**
   * Each sandbox has a network namespace of its own (the daemon is root): it reaches none of this
   * host's addresses, listeners or other sandboxes, and only it answers at its address.
   * Otherwise sandboxes share the host's network and its loopback listeners.
   */
  loopbackFenced: boolean;
  /** Why any of the above is missing, for the start-up log. */
  reasons: string[];
  /** How sandboxes' disks hold (DESIGN §8b), and the sentence the start-up log gives about it. */
  disk?: { method: DiskMethod; note: string };
}

/** Runs a harmless command the way a sandbox would be run, and says what worked. */
export async function probeContainment(bubblewrap: Bubblewrap, networks: SandboxNetworks | undefined): Promise<Containment> {
  const uncontained = (reason: string): Containment => ({ namespaces: false, ownUid: false, loopbackFenced: false, reasons: [reason] });
  if (!(await executable(bubblewrap.path))) return uncontained(`bubblewrap is not installed at ${bubblewrap.path} (apt-get install bubblewrap)`);
  const root = process.getuid?.() === 0;
  for (const tool of [SETPRIV, PRLIMIT]) if (root && !(await executable(tool))) return uncontained(`${tool} is not installed (util-linux)`);
  try {
    for (const bind of await bubblewrap.systemBinds()) await bubblewrap.refuseProtected(bind.src);
    const args = await bubblewrap.args([process.execPath, "--version"], { uid: root ? PROBE_UID : undefined, hostname: "probe", env: {}, reportPid: false });
    await bubblewrap.run(args, { uid: root ? PROBE_UID : undefined }, 10_000);
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    return uncontained(`bubblewrap cannot contain a sandbox here: ${(e.stderr || e.message).trim()}`);
  }
  const reasons: string[] = [];
  if (!root) reasons.push("the daemon is not root: sandboxes run as its uid, inside user namespaces");
  const fence = networks ? await networks.probe() : "networks of their own are turned off: sandboxes share the host's network";
  if (fence) reasons.push(fence);
  return { namespaces: true, ownUid: root, loopbackFenced: !fence, reasons };
}

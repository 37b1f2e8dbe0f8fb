import { execFile, spawn } from "node:child_process";
import { promisify } from "node:util";
import { exists } from "./files.js";
import { SANDBOX_UID_BASE, SANDBOX_UID_COUNT } from "./uids.js";

const FIREWALL_CHAIN = "HV-SANDBOX-OUT";
const run = promisify(execFile);

/**
 * Fences sandbox uids off this host's own addresses (iptables' owner match, OUTPUT chain):
 * replies on connections made to them pass, new connections to any local address are refused.
 * Idempotent: the chain is replaced atomically (iptables-restore --noflush) and jumped to once.
 * It stays when the daemon stops, as the sandboxes do. Returns why it could not, if so.
 */
export async function fenceLoopback(): Promise<string | undefined> {
  const range = `${SANDBOX_UID_BASE}-${SANDBOX_UID_BASE + SANDBOX_UID_COUNT - 1}`;
  const rules = [
    "*filter",
    `:${FIREWALL_CHAIN} - [0:0]`,
    `-A ${FIREWALL_CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN`,
    `-A ${FIREWALL_CHAIN} -p tcp -m addrtype --dst-type LOCAL -j REJECT --reject-with tcp-reset`,
    `-A ${FIREWALL_CHAIN} -m addrtype --dst-type LOCAL -j REJECT`,
    "COMMIT",
    "",
  ].join("\n");
  const families = exists("/proc/net/if_inet6") ? ["iptables", "ip6tables"] : ["iptables"];
  for (const tool of families) {
    try {
      await runWithInput(`${tool}-restore`, ["-w", "--noflush"], rules);
      const jump = ["OUTPUT", "-m", "owner", "--uid-owner", range, "-j", FIREWALL_CHAIN];
      const present = await run(tool, ["-w", "-C", ...jump]).then(
        () => true,
        () => false,
      );
      if (!present) await run(tool, ["-w", "-I", ...jump]);
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      return `${tool} cannot fence sandboxes off the host's own addresses: ${(e.stderr || e.message).trim()}`;
    }
  }
  return undefined;
}

export function runWithInput(command: string, args: string[], input: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["pipe", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.once("error", reject);
    child.once("close", (code) => (code === 0 ? resolve() : reject(Object.assign(new Error(`${command} exited with ${code}`), { stderr }))));
    child.stdin.end(input);
  });
}

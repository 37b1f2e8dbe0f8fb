import { rename, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Slot } from "../../../proxy/target.js";
import { HypervisorError } from "../../errors.js";
import { exists } from "./files.js";
import { environHas } from "./proc.js";
import type { ProcessRecord, Records } from "./records.js";

/**
 * Data once lived in the state dir, at `<records>/<sandbox>/data`, where any sandbox could
 * walk up to the database. It moves to the data dir by rename; a sandbox still running from
 * there (uncontained, from before) is stopped first (`kill`, told the identity it runs with).
 * Nothing is copied: across file systems, or onto data already at the new place, the daemon
 * refuses to start and says what to do.
 */
export async function migrateLegacyData(
  records: Records,
  dataDirOf: (user: string, slot: Slot) => string,
  kill: (record: ProcessRecord, timeoutMs: number, identity: string) => Promise<void>,
): Promise<void> {
  for (const { entry, user, slot } of await records.entries()) {
    const old = join(records.root, entry, "data");
    if (
      !(await stat(old).then(
        (s) => s.isDirectory(),
        () => false,
      ))
    )
      continue;
    const target = dataDirOf(user, slot);
    const record = await records.read(user, slot);
    if (record?.pid && environHas(record.pid, `DATA_DIR=${old}`)) {
      await kill({ spec: record.spec, pid: record.pid }, 10_000, `DATA_DIR=${old}`);
      await records.write(user, slot, { spec: record.spec });
    }
    if (exists(target)) {
      throw new HypervisorError("conflict", `sandbox data at both ${old} and ${target}: keep one (the other may be moved away), then start again`);
    }
    try {
      await rename(old, target);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EXDEV") throw err;
      throw new HypervisorError(
        "internal",
        `cannot move sandbox data from ${old} to ${target} across file systems: with the hypervisor stopped, \`mv\` it there by hand, or set HYPERVISOR_SANDBOX_DATA_DIR to a directory on the state dir's file system`,
      );
    }
  }
}

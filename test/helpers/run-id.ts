import { randomBytes } from "node:crypto";
import { appendFileSync } from "node:fs";

/**
 * One id per test process. Every user a test creates is named after it, so the containers,
 * volumes and networks it leads to carry it in their labels and names.
 */
export const runId = `t${randomBytes(3).toString("hex")}`;

// The test runner's list of this run's ids (scripts/run-tests.mjs): after the last file, it
// removes what the kernel may still hold under them (empty sandbox cgroups, fence chains).
if (process.env.HYPERVISOR_TEST_RUN_IDS) appendFileSync(process.env.HYPERVISOR_TEST_RUN_IDS, `${runId}\n`);

export function testUser(name: string): string {
  return `${runId}-${name}`;
}

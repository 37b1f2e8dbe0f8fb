import { randomBytes } from "node:crypto";

/**
 * One id per test process. Every user a test creates is named after it, so the containers,
 * volumes and networks it leads to carry it in their labels and names.
 */
export const runId = `t${randomBytes(3).toString("hex")}`;

export function testUser(name: string): string {
  return `${runId}-${name}`;
}

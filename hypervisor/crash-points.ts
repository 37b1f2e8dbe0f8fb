/**
 * The steps of a multi-step change where a crash leaves the most to recover. A fault test names
 * one in HYPERVISOR_TEST_CRASH_AT; the daemon then dies by SIGKILL right after that step, as a
 * crash or an OOM kill at that moment would leave things (test/faults/start-crash.test.ts,
 * test/faults/data-crash.test.ts). Unset, as in production, a crash point does nothing.
 */
export type CrashPoint =
  // a process sandbox's start
  | "before-spawn"
  | "after-spawn"
  | "after-record"
  // a snapshot: copied and in place, not yet recorded
  | "snapshot-placed"
  // a restore: the copy made, the slot's data moved aside, the copy in its place
  | "restore-copied"
  | "restore-moved-aside"
  | "restore-swapped"
  // a promote or rollback with data: live stopped, its data prepared, the new generation assigned
  | "live-stopped"
  | "live-prepared"
  | "live-assigned";

export function crashPoint(step: CrashPoint): void {
  if (process.env.HYPERVISOR_TEST_CRASH_AT === step) process.kill(process.pid, "SIGKILL");
}

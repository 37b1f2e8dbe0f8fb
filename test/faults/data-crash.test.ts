import assert from "node:assert/strict";
import Database from "better-sqlite3";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { CrashPoint } from "../../hypervisor/crash-points.js";
import { referenceSandboxCommand } from "../../hypervisor/generations/default-generation.js";
import { daemonEnv, sandboxDataDir, spawnDaemon, tempDir, type SpawnedDaemon } from "../helpers/daemon.js";
import { testUser } from "../helpers/run-id.js";
import { baseUrl } from "../helpers/sandbox-client.js";

const sandbox = referenceSandboxCommand();
/** Enough data that a full copy takes a while, so a kill can land inside it. */
const BLOB_BYTES = 96 * 1024 * 1024;
/**
 * Where each SIGKILL lands: right after each step of a promote and of a restore (the daemon kills
 * itself there, HYPERVISOR_TEST_CRASH_AT), and once 40 ms into the call, inside the copy itself.
 */
const PROMOTE_KILLS: (CrashPoint | number)[] = ["live-stopped", "snapshot-placed", "live-prepared", "live-assigned", 40];
const RESTORE_KILLS: (CrashPoint | number)[] = ["restore-copied", "restore-moved-aside", "restore-swapped", "snapshot-placed", 40];

interface SnapshotRow {
  id: string;
  slot: string;
  reason: string;
  generation_id: number;
}

/**
 * The helpers a killed daemon left running (a copy, a size count, a tar) die with it under
 * systemd (its unit's control group); here they are found by the test's own data path and ended
 * by pid, so the next daemon does not race them.
 */
function endOrphans(dataDir: string): void {
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const comm = readFileSync(`/proc/${pid}/comm`, "utf8").trim();
      if (!["cp", "du", "tar", "btrfs"].includes(comm)) continue;
      if (!readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(dataDir)) continue;
      process.kill(Number(pid), "SIGKILL");
    } catch {
      // gone already
    }
  }
}

describe("SIGKILL of the daemon inside promote and restore (process runtime)", () => {
  const state = tempDir();
  const dataDir = sandboxDataDir(state.path);
  const user = testUser("data-crash");
  let daemon: SpawnedDaemon | undefined;
  const env = () => daemonEnv(state.path, { HYPERVISOR_START_TIMEOUT_MS: "10000", HYPERVISOR_SNAPSHOT_KEEP: "100" });

  after(async () => {
    await daemon?.kill("SIGKILL");
    endOrphans(dataDir);
    const again = await spawnDaemon(env()).catch(() => undefined);
    for (const role of ["live", "dev"]) await again?.operator.post(`/sandboxes/${user}/${role}/stop`).catch(() => undefined);
    await again?.kill("SIGTERM");
    state.remove();
  });

  const rows = (): SnapshotRow[] => {
    const db = new Database(join(state.path, "hypervisor.db"), { readonly: true });
    try {
      return db.prepare("SELECT id, slot, reason, generation_id FROM snapshots WHERE user = ?").all(user) as SnapshotRow[];
    } finally {
      db.close();
    }
  };
  const liveSlot = async () =>
    (await daemon!.operator.get("/sandboxes")).body.sandboxes.find((s: { user: string; role: string }) => s.user === user && s.role === "live").slot as string;
  const counter = async () => {
    const status = await daemon!.operator.post(`/sandboxes/${user}/live/start`);
    assert.equal(status.status, 200, JSON.stringify(status.body));
    const { host, port } = status.body.sandbox.endpoint;
    return {
      count: ((await (await fetch(`${baseUrl({ host, port })}/counter`)).json()) as { count: number }).count,
      generation: status.body.sandbox.generation as number,
    };
  };
  /** After a restart: nothing half-written is left once the sweep ran, every record has its bytes, and the data is there. */
  const consistent = async (slot: string) => {
    const area = join(dataDir, ".snapshots", `${user}-${slot}`);
    for (let i = 0; i < 200; i++) {
      const names = existsSync(area) ? readdirSync(area).sort() : [];
      const recorded = rows()
        .filter((r) => r.slot === slot)
        .map((r) => r.id)
        .sort();
      if (names.join() === recorded.join()) break;
      await sleep(50);
    }
    const names = existsSync(area) ? readdirSync(area).sort() : [];
    assert.deepEqual(
      names,
      rows()
        .filter((r) => r.slot === slot)
        .map((r) => r.id)
        .sort(),
      "on disk exactly what is recorded: nothing half-written, nothing lost",
    );
    assert.ok(existsSync(join(dataDir, `${user}-${slot}`, "counter")), "the slot has its data");
  };

  it("leaves the user on the old or the new generation with its own data, and no half-written snapshot, whenever it is killed", async () => {
    daemon = await spawnDaemon(env());
    assert.equal((await daemon.operator.post("/users", { name: user })).status, 201);
    const g1 = (await daemon.operator.get("/generations")).body.generations[0].id as number;
    const g2 = (
      await daemon.operator.post("/generations", {
        command: [...sandbox.command.filter((a) => !a.startsWith("--version=")), "--version=2", "--slow-start-ms=500"],
        version: "2",
      })
    ).body.generation.id as number;
    const first = await counter();
    assert.deepEqual(first, { count: 0, generation: g1 });
    const { host, port } = (await daemon.operator.post(`/sandboxes/${user}/live/start`)).body.sandbox.endpoint;
    for (let i = 0; i < 5; i++) await fetch(`${baseUrl({ host, port })}/counter`, { method: "POST" });
    const slot = await liveSlot();
    writeFileSync(join(dataDir, `${user}-${slot}`, "blob"), Buffer.alloc(BLOB_BYTES, 7));

    /**
     * Sends `call` and has the daemon die where `at` says: at a step (a daemon armed for it, which
     * must then die by its own SIGKILL, proving the step was reached) or `at` ms in. Then the next
     * daemon starts, unarmed, on what was left.
     */
    const killedAt = async (at: CrashPoint | number, prepare: () => Promise<void>, call: () => Promise<unknown>) => {
      if (typeof at === "string") {
        await daemon!.kill("SIGTERM");
        daemon = await spawnDaemon({ ...env(), HYPERVISOR_TEST_CRASH_AT: at });
      }
      await prepare();
      const armed = daemon!;
      const exited = new Promise<NodeJS.Signals | null>((resolve) =>
        armed.child.exitCode !== null || armed.child.signalCode !== null
          ? resolve(armed.child.signalCode)
          : armed.child.once("exit", (_c, signal) => resolve(signal)),
      );
      void call().catch(() => undefined);
      if (typeof at === "number") {
        await sleep(at);
        await armed.kill("SIGKILL");
      } else {
        const signal = await Promise.race([exited, sleep(30_000).then(() => "still running")]);
        assert.equal(signal, "SIGKILL", `the daemon died at ${at}: ${armed.output().slice(-2000)}`);
      }
      endOrphans(dataDir);
      daemon = await spawnDaemon(env());
      await consistent(slot);
    };

    let expected = 5;
    for (let i = 0; i < Math.max(PROMOTE_KILLS.length, RESTORE_KILLS.length); i++) {
      const promoteAt = PROMOTE_KILLS[i];
      if (promoteAt !== undefined) {
        // A promote to g2 (or back to g1), killed at `promoteAt`.
        const now = (await counter()).generation;
        const target = now === g1 ? g2 : g1;
        await killedAt(
          promoteAt,
          async () => assert.equal((await daemon!.operator.post("/deploy", { generation: target, users: [user] })).status, 200),
          () => daemon!.operator.post("/promote", { users: [user] }),
        );
        const after = await counter();
        assert.equal(after.count, expected, `killed at ${promoteAt} of a promote: live's data is live's`);
        assert.ok([now, target].includes(after.generation), `killed at ${promoteAt} of a promote: the old or the new generation`);
        assert.equal(await liveSlot(), slot, "a promote never moves live to another slot");
      }

      // A restore of the first rollback point (count 5), over data that counts one more: the data
      // is the old or the restored, never missing, never a mix.
      const restoreAt = RESTORE_KILLS[i];
      const oldest = rows().find((r) => r.reason === "pre-promote");
      if (restoreAt === undefined || !oldest) continue;
      await killedAt(
        restoreAt,
        async () => {
          const ep = (await daemon!.operator.post(`/sandboxes/${user}/live/start`)).body.sandbox.endpoint;
          expected = ((await (await fetch(`${baseUrl(ep)}/counter`, { method: "POST" })).json()) as { count: number }).count;
        },
        () => daemon!.operator.post(`/users/${user}/snapshots/${oldest.id}/restore`, {}),
      );
      const restored = (await counter()).count;
      assert.ok([expected, 5].includes(restored), `killed at ${restoreAt} of a restore: ${restored} is the data before (${expected}) or the snapshot's (5)`);
      expected = restored;
    }
  });
});

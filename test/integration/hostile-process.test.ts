// DESIGN §5a, the process half the network does not cover, proven from inside a hostile
// generation on a daemon started as a shell would start it: F13 (a sandbox made a user namespace
// and was root in it) and F17 (a descriptor the daemon inherited without close-on-exec reached
// every sandbox).
import assert from "node:assert/strict";
import { closeSync, openSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Endpoint } from "../../proxy/target.js";
import { daemonEnv, spawnDaemon, tempDir, type SpawnedDaemon } from "../helpers/daemon.js";
import { repoRoot } from "../helpers/paths.js";
import { testUser } from "../helpers/run-id.js";
import { baseUrl } from "../helpers/sandbox-client.js";

const hostileScript = join(repoRoot, "dist/test/fixtures/hostile-sandbox.js");
/** Past 15 and after a gap, where Node leaves an inherited descriptor as it found it. */
const EXTRA_FD = 100;

describe("a hostile process sandbox and what it inherits (DESIGN §5a)", { skip: process.getuid?.() === 0 ? false : "needs root: sandbox uids" }, () => {
  const state = tempDir();
  const marker = join(state.path, "..", `${state.path.split("/").pop()}-inherited.txt`);
  const mallory = testUser("inherit-mallory");
  let daemon: SpawnedDaemon;
  let hostile: Endpoint;
  const ask = async <T>(path: string): Promise<T> => {
    const res = await fetch(`${baseUrl(hostile)}${path}`, { signal: AbortSignal.timeout(30_000) });
    assert.equal(res.status, 200, await res.clone().text());
    return (await res.json()) as T;
  };

  before(async () => {
    writeFileSync(marker, "the shell's file\n");
    const fd = openSync(marker, "r");
    try {
      daemon = await spawnDaemon(daemonEnv(state.path, { HYPERVISOR_LOG_LEVEL: "warn" }), { inherit: { fd, at: EXTRA_FD } });
    } finally {
      closeSync(fd);
    }
    assert.equal((await daemon.operator.post("/users", { name: mallory })).status, 201);
    const added = await daemon.operator.post<{ generation: { id: number } }>("/generations", {
      command: [process.execPath, hostileScript],
      version: "hostile-inherit",
    });
    assert.equal(added.status, 201, JSON.stringify(added.body));
    assert.equal((await daemon.operator.post("/deploy", { generation: added.body.generation.id, users: [mallory] })).status, 200);
    const started = await daemon.operator.post<{ sandbox: { endpoint: Endpoint } }>(`/sandboxes/${mallory}/dev/start`);
    assert.equal(started.status, 200, JSON.stringify(started.body));
    hostile = started.body.sandbox.endpoint;
  });
  after(async () => {
    for (const role of ["live", "dev"]) await daemon?.operator.post(`/sandboxes/${mallory}/${role}/stop`).catch(() => undefined);
    await daemon?.kill("SIGTERM");
    state.remove();
    await import("node:fs/promises").then(({ rm }) => rm(marker, { force: true }));
  });

  it("F17: receives no descriptor the daemon inherited without close-on-exec", async () => {
    const fds = await ask<{ fd: number; target: string }[]>("/fds");
    assert.deepEqual(
      fds.filter((d) => d.target === marker || d.fd === EXTRA_FD),
      [],
      `the daemon's inherited descriptor reached the sandbox: ${JSON.stringify(fds)}`,
    );
  });

  it("F13: cannot make a user namespace, so is never root in one", async () => {
    const result = await ask<{ status: number | null; stdout: string; stderr: string }>("/userns");
    assert.notEqual(result.status, 0, `unshare -Ur succeeded: uid ${result.stdout.trim()} inside`);
    assert.doesNotMatch(result.stdout, /^0$/m);
  });
});

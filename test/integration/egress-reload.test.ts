import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { daemonEnv, spawnDaemon, tempDir } from "../helpers/daemon.js";
import { startCli } from "../helpers/hypervisorctl.js";
import { repoRoot } from "../helpers/paths.js";

const MAIN = join(repoRoot, "dist/hypervisor/main.js");
const SECRET = "sk-rotated-in-by-sighup-5c4b3a29180f";

interface RouteView {
  name: string;
  secretLoaded: boolean;
}

describe("egress routes from systemd credentials, reloaded on SIGHUP", () => {
  const dirs: Array<{ path: string; remove(): void }> = [];
  const credentials = mkdtempSync(join(tmpdir(), "hv-egress-creds-"));
  after(() => {
    for (const d of dirs) d.remove();
    rmSync(credentials, { recursive: true, force: true });
  });
  const writeRoutes = (routes: unknown) => writeFileSync(join(credentials, "egress-routes"), JSON.stringify(routes));
  const route = { name: "provider", upstream: "https://provider.invalid", header: "authorization", value: "Bearer {secret}", secret: "provider" };

  it("reads egress-routes and egress-<secret> from $CREDENTIALS_DIRECTORY, again on SIGHUP; a broken file keeps the old routes", async () => {
    writeRoutes([route]);
    const dir = tempDir("hv-egress-reload-");
    dirs.push(dir);
    const daemon = await spawnDaemon(daemonEnv(dir.path, { CREDENTIALS_DIRECTORY: credentials, HYPERVISOR_LOG_LEVEL: "info" }));
    const routes = async () => (await daemon.operator.send("GET", "/egress/routes")).body.routes as RouteView[];
    const waitFor = async (what: string, test: () => Promise<boolean> | boolean) => {
      for (let i = 0; i < 200; i++) {
        if (await test()) return;
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.fail(`${what}; output: ${daemon.output()}`);
    };
    try {
      assert.deepEqual(
        (await routes()).map((r) => [r.name, r.secretLoaded]),
        [["provider", false]],
      );
      writeFileSync(join(credentials, "egress-provider"), `${SECRET}\n`);
      daemon.child.kill("SIGHUP");
      await waitFor("the secret is loaded after SIGHUP", async () => (await routes())[0]?.secretLoaded === true);

      writeRoutes([{ ...route, header: "host" }]);
      daemon.child.kill("SIGHUP");
      await waitFor("the failed reload is logged", () => daemon.output().includes("egress routes not reloaded"));
      assert.match(daemon.output(), /route \\"provider\\" \(#1\), field \\"header\\"/);
      assert.deepEqual(
        (await routes()).map((r) => [r.name, r.secretLoaded]),
        [["provider", true]],
        "the old routes stay, and the daemon runs on",
      );
      assert.equal(daemon.child.exitCode, null);
      assert.ok(!daemon.output().includes(SECRET), "the secret is in no log line");
    } finally {
      await daemon.kill("SIGTERM");
      writeRoutes([route]);
    }
  });

  it("refuses to start on a routes file it cannot use, naming the route and the field", async () => {
    writeRoutes([{ ...route, upstream: "http://plain.invalid" }]);
    const dir = tempDir("hv-egress-refused-");
    dirs.push(dir);
    const child = startCli([], daemonEnv(dir.path, { CREDENTIALS_DIRECTORY: credentials }), [process.execPath, MAIN]);
    let stderr = "";
    child.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill("SIGTERM"), 10_000);
    const code = await new Promise<number | null>((resolve) => child.once("close", resolve));
    clearTimeout(timer);
    assert.equal(code, 2, stderr);
    assert.match(
      stderr,
      /hypervisor: invalid configuration: HYPERVISOR_EGRESS_ROUTES_FILE: .*route "provider" \(#1\), field "upstream": must start with https:\/\//,
    );
    writeRoutes([route]);
  });
});

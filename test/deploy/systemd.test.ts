// The hardened unit for non-Nix hosts, checked with the host's systemd-analyze. `verify` runs
// against this machine's units and binaries on purpose: it proves that ExecStart=/usr/bin/node
// exists and that podman.socket is a unit here, as on the Debian hosts the unit is written for
// (DESIGN §9: `apt-get install podman`, Debian's nodejs at /usr/bin/node).
import { describe, it, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, relative } from "node:path";
import { configVariables } from "../../hypervisor/config.js";
import {
  debianSocketPaths,
  debianUnitPath,
  environmentOf,
  evalModule,
  hostHasUnit,
  operatorTcpDropInPath,
  parseUnit,
  repoRoot,
  requireTool,
  run,
  serverDefaults,
  systemdDir,
  systemdFiles,
  verifyUnit,
  withoutNewerKeys,
} from "./host-tools.js";

const maxExposure = 2.5;

function withSystemdAnalyze(t: TestContext): boolean {
  if (!requireTool(t, "systemd-analyze", "apt-get install systemd")) return false;
  // `security --offline=` exists since systemd 250.
  const version = Number(/systemd (\d+)/.exec(run("systemd-analyze", ["--version"]).stdout)?.[1]);
  assert.ok(version >= 250, `systemd-analyze ${version} is too old for --offline (needs 250)`);
  return true;
}

/** `systemd-analyze security --offline=true` of a unit file, or of a unit by name with `env`; the overall exposure. */
function exposureOf(unit: string, env: Record<string, string> = {}): number {
  const result = run("systemd-analyze", ["security", "--offline=true", unit], repoRoot, env);
  const match = new RegExp(`Overall exposure level for ${basename(unit).replace(/\./g, "\\.")}: (\\d+(?:\\.\\d+)?)`).exec(result.stdout);
  assert.ok(match, `no exposure level in the output:\n${result.stdout}\n${result.stderr}`);
  return Number(match[1]);
}

const { units, dropIns } = systemdFiles();

describe("systemd units and drop-ins for non-Nix hosts (deploy/systemd/)", () => {
  it("finds the daemon's unit and the drop-ins the runbook installs", () => {
    assert.ok(units.includes(debianUnitPath));
    assert.ok(dropIns.some((d) => d.path === operatorTcpDropInPath));
    assert.ok(dropIns.some((d) => d.unit === "podman.socket"));
  });

  for (const unit of units) {
    it(`${basename(unit)} passes systemd-analyze verify without a single message, alone and with its drop-ins`, (t) => {
      if (!withSystemdAnalyze(t)) return;
      // verify reports unknown keys only as warnings with exit status 0, so the output must be empty too.
      for (const result of [run("systemd-analyze", ["verify", unit]), verifyUnit(basename(unit), [systemdDir])]) {
        assert.equal(withoutNewerKeys(`${result.stdout}${result.stderr}`).trim(), "", "verify printed nothing");
        assert.equal(result.status, 0);
      }
    });
  }

  for (const dropIn of dropIns.filter((d) => !units.includes(join(systemdDir, d.unit)))) {
    it(`${relative(systemdDir, dropIn.path)} passes systemd-analyze verify on the host's ${dropIn.unit}`, (t) => {
      if (!withSystemdAnalyze(t)) return;
      if (!hostHasUnit(dropIn.unit)) {
        const message = `${dropIn.unit} is not installed (apt-get install podman)`;
        if (process.env.CI === "true") assert.fail(`${message}; CI must run this check`);
        t.skip(message);
        return;
      }
      const result = verifyUnit(dropIn.unit, [systemdDir]);
      assert.equal(`${result.stdout}${result.stderr}`.trim(), "", "verify printed nothing");
      assert.equal(result.status, 0);
    });
  }

  // Only services run code: `security` rates a socket or timer as if it were one (podman.socket
  // scores 9.8), so those are covered through the service they start.
  for (const unit of units.filter((u) => u.endsWith(".service"))) {
    it(`${basename(unit)} has an overall exposure of ${maxExposure} or lower, alone and with its drop-ins (systemd-analyze security --offline=true)`, (t) => {
      if (!withSystemdAnalyze(t)) return;
      for (const exposure of [exposureOf(unit), exposureOf(basename(unit), { SYSTEMD_UNIT_PATH: `${systemdDir}:` })]) {
        assert.ok(exposure <= maxExposure, `exposure ${exposure} > ${maxExposure}`);
      }
    });
  }
});

describe("systemd unit for non-Nix hosts (deploy/systemd/hypervisor.service)", () => {
  it("passes systemd-analyze verify with its socket units, without a single message", (t) => {
    if (!withSystemdAnalyze(t)) return;
    const result = run("systemd-analyze", ["verify", ...Object.values(debianSocketPaths), debianUnitPath]);
    assert.equal(withoutNewerKeys(`${result.stdout}${result.stderr}`).trim(), "", "verify printed nothing");
    assert.equal(result.status, 0);
  });

  it("takes its listeners from socket units named as the daemon expects, at the addresses it would bind", () => {
    const service = parseUnit(readFileSync(debianUnitPath, "utf8")).sections.get("Service")!;
    const env = environmentOf(service.get("Environment") ?? []);
    const sockets = Object.fromEntries(
      Object.entries(debianSocketPaths).map(([name, path]) => [name, parseUnit(readFileSync(path, "utf8")).sections.get("Socket")!]),
    ) as Record<keyof typeof debianSocketPaths, Map<string, string[]>>;
    assert.deepEqual(service.get("Sockets"), ["hypervisor.socket hypervisor-operator.socket"]);
    for (const [name, socket] of Object.entries(sockets)) {
      assert.deepEqual(socket.get("FileDescriptorName"), [name], `the descriptor is named ${name} (LISTEN_FDNAMES)`);
      assert.deepEqual(socket.get("Service"), ["hypervisor.service"]);
      assert.equal(socket.get("Accept"), undefined, "Accept=no: the daemon accepts");
    }
    assert.deepEqual(sockets.public.get("ListenStream"), [env.get("HYPERVISOR_LISTEN")]);
    assert.deepEqual(sockets.operator.get("ListenStream"), [`${env.get("HYPERVISOR_STATE_DIR")}/operator.sock`], "the default HYPERVISOR_OPERATOR_SOCKET");
    assert.deepEqual(sockets.operator.get("SocketMode"), ["0600"]);
    assert.deepEqual(sockets.operator.get("SocketUser"), service.get("User"));
  });

  it("starts the built daemon, never a build, and waits out the shutdown grace before SIGKILL", () => {
    const service = parseUnit(readFileSync(debianUnitPath, "utf8")).sections.get("Service")!;
    const [execStart] = service.get("ExecStart")!;
    assert.match(execStart!, /^\/usr\/bin\/node \S+\/dist\/hypervisor\/main\.js$/);
    const grace = Number(environmentOf(service.get("Environment") ?? []).get("HYPERVISOR_SHUTDOWN_GRACE_MS"));
    const timeout = Number(/^(\d+)s$/.exec(service.get("TimeoutStopSec")![0]!)?.[1]);
    assert.ok(timeout * 1000 >= grace + 5000, `TimeoutStopSec=${timeout}s leaves a margin over the grace of ${grace} ms`);
  });

  it("sets or documents every variable of hypervisor/config.ts, with its defaults", () => {
    const unit = parseUnit(readFileSync(debianUnitPath, "utf8"));
    const set = environmentOf(unit.sections.get("Service")?.get("Environment") ?? []);
    const documented = environmentOf(unit.commented.get("Environment") ?? []);
    const inUnit = [...set.keys(), ...documented.keys()].filter((name) => name.startsWith("HYPERVISOR_"));
    assert.deepEqual([...inUnit].sort(), configVariables.map((variable) => variable.name).sort());

    for (const variable of configVariables) {
      const value = set.get(variable.name);
      const secret = "secret" in variable && variable.secret;
      if (secret) {
        assert.ok(value === undefined || value.startsWith("%d/"), `secret ${variable.name} arrives as a credential path (%d/...), got ${value}`);
      }
      if (value === undefined || variable.default === undefined || secret) continue;
      if (variable.name in serverDefaults) {
        assert.notEqual(value, variable.default, `${variable.name} is listed as a server default but equals npm start's`);
        continue;
      }
      assert.equal(value, variable.default, `${variable.name}: unit default equals hypervisor/config.ts`);
    }
  });

  it("needs no credential by default; the TCP operator listener's drop-in brings its token from tmpfs", () => {
    const service = parseUnit(readFileSync(debianUnitPath, "utf8")).sections.get("Service")!;
    assert.equal(service.get("LoadCredential"), undefined, "the unit starts without any secret");
    assert.equal(service.get("ImportCredential"), undefined);
    assert.equal(environmentOf(service.get("Environment") ?? []).get("HYPERVISOR_OPERATOR_TOKEN_FILE"), undefined);

    const dropIn = parseUnit(readFileSync(operatorTcpDropInPath, "utf8")).sections.get("Service")!;
    const env = environmentOf(dropIn.get("Environment") ?? []);
    assert.ok(env.get("HYPERVISOR_OPERATOR_LISTEN"), "the drop-in opens the TCP listener");
    assert.equal(env.get("HYPERVISOR_OPERATOR_TOKEN_FILE"), undefined, "the daemon finds $CREDENTIALS_DIRECTORY/operator-token itself");
    const credentials = dropIn.get("LoadCredential") ?? [];
    assert.equal(credentials.length, 1);
    // /run is a tmpfs: the token is never on the node's disk.
    assert.match(credentials[0]!, /^operator-token:\/run\/credstore\/[^/]+$/);
  });

  it(`keeps the NixOS module's rendering of the unit at ${maxExposure} or lower too`, (t) => {
    if (!withSystemdAnalyze(t)) return;
    if (!requireTool(t, "nix-instantiate", "apt-get install nix-bin")) return;
    const [evaluation] = evalModule([
      { settings: { enable: true, publicOrigin: "https://sandbox.example.org", operatorTokenFile: "/run/keys/hypervisor-operator-token" } },
    ]);
    const service = evaluation!.config.systemd!.services!.hypervisor!;
    // Rendered the way nixos/lib/systemd-lib.nix (serviceToUnit, attrsToSection) writes units.
    const option = (value: unknown): string => (value === true ? "true" : value === false ? "false" : String(value));
    const lines = [
      "[Unit]",
      `Description=${service.description}`,
      `After=${service.after.join(" ")}`,
      `Wants=${service.wants.join(" ")}`,
      `StartLimitIntervalSec=${service.startLimitIntervalSec}`,
      `StartLimitBurst=${service.startLimitBurst}`,
      "",
      "[Service]",
      ...Object.entries(service.environment)
        .filter(([, value]) => value !== null)
        .map(([name, value]) => `Environment=${JSON.stringify(`${name}=${value}`)}`),
      ...Object.entries(service.serviceConfig).flatMap(([key, value]) => (Array.isArray(value) ? value : [value]).map((item) => `${key}=${option(item)}`)),
      "",
      "[Install]",
      `WantedBy=${service.wantedBy.join(" ")}`,
    ];
    const dir = mkdtempSync(join(tmpdir(), "hypervisor-unit-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const unitPath = join(dir, "hypervisor.service");
    writeFileSync(unitPath, lines.join("\n") + "\n");
    const exposure = exposureOf(unitPath);
    assert.ok(exposure <= maxExposure, `exposure ${exposure} > ${maxExposure}`);
  });
});

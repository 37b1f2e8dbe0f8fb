// The flake and the NixOS module, checked offline with Debian's nix-bin (DESIGN §9): nixpkgs is
// not available, so the module is evaluated against a stub lib (fixtures/stub-lib.nix) by a
// one-module evaluator (fixtures/eval-module.nix). Evaluation under the real NixOS module
// system is `nix flake check` on a Nix host (flake.nix `checks`).
import { describe, it, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { boundsOf, configVariables, type BoundedVariable } from "../../hypervisor/config.js";
import {
  debianUnitPath,
  evalModule,
  evalModuleNixExpr,
  moduleVerdicts,
  nixEvalArgs,
  parseUnit,
  repoFiles,
  repoRoot,
  requireTool,
  run,
  serverDefaults,
  type ModuleEvaluation,
} from "./host-tools.js";

const withNix = (t: TestContext): boolean => requireTool(t, "nix-instantiate", "apt-get install nix-bin");

/** Options that deliberately set no HYPERVISOR_* variable, and why. */
const optionsWithoutVariable: Record<string, string> = {
  enable: "switches the NixOS service on or off; the daemon never sees it",
  package: "chooses the build that ExecStart runs",
  environmentFile: "systemd's EnvironmentFile=, read by systemd; it may carry any variable",
  openFirewall: "the host's firewall, outside the daemon",
  egressSecrets: "LoadCredential= lines only: the daemon finds egress-<secret> in $CREDENTIALS_DIRECTORY by itself",
};

/** Config variables that deliberately have no option, and why. Empty: every one has an option. */
const variablesWithoutOption: Record<string, string> = {
  HYPERVISOR_EGRESS_SECRETS_DIR: "on NixOS the routes' secrets are credentials (egressSecrets), never a directory of files",
};

/** A valid value, different from the default, for every option; each is set alone. */
const sampleValues: Record<string, unknown> = {
  package: { type: "derivation", name: "hypervisor-other", outPath: "/nix/store/11111111111111111111111111111111-hypervisor-other" },
  listen: "0.0.0.0:9000",
  publicOrigin: "https://sandbox.example.org",
  rpId: "example.org",
  sandboxDomain: "sandboxes.example.org",
  stateDir: "/srv/hypervisor",
  runtime: "process",
  podmanSocket: "/run/other/podman.sock",
  operatorSocket: "/run/hypervisor/operator.sock",
  operatorListen: "127.0.0.1:9090",
  operatorTokenFile: "/run/keys/hypervisor-operator-token",
  sshKeyFile: "/run/keys/hypervisor-ssh-key",
  egressRoutesFile: "/etc/hypervisor/egress-routes.json",
  egressSecrets: { openai: "/run/keys/hypervisor-egress-openai" },
  egressSecretsKeyFile: "/run/keys/hypervisor-egress-secrets-key",
  sshKnownHostsFile: "/etc/hypervisor/known_hosts",
  environmentFile: "/etc/hypervisor/hypervisor.env",
  registration: "closed",
  processUncontained: true,
  processNetwork: "192.168.40.0/24",
  "egress.mode": "open",
  "egress.allow": ["api.example.org", "10.40.0.0/16"],
  "egress.listen": "10.254.0.1:3000",
  "egress.remoteListen": "10.0.0.1:3129",
  "egress.proxyRpm": 90,
  "egress.proxyDailyBytes": "2g",
  "egress.sandboxRate": "8m",
  drainMs: 1000,
  rollbackDeadlineMs: 2000,
  promoteDeadlineMs: 40000,
  snapshotKeep: 7,
  startTimeoutMs: 3000,
  idleStopMs: 0,
  idleFreezeMs: 0,
  memoryReserve: "1g",
  knownGoodAfterMs: 4000,
  shutdownGraceMs: 2500,
  maxSandboxes: 5,
  userMaxRequests: 7,
  userMaxWebSockets: 3,
  logLevel: "debug",
  trustedProxies: ["10.0.0.0/8", "fd00::/8"],
  "sandbox.image": "localhost/hypervisor-sandbox:2",
  "sandbox.memory": "1g",
  "sandbox.cpus": "0.5",
  "sandbox.pids": 64,
  "sandbox.logMax": "20m",
  "sandbox.disk": "4g",
  "sandbox.environment": { TZ: "UTC" },
  "sandbox.dataDir": "/srv/hypervisor-sandboxes",
  openFirewall: true,
};

/** What a production host sets (deploy/hosts/example.nix, in short). */
const production = {
  enable: true,
  publicOrigin: "https://sandbox.example.org",
  runtime: "podman",
  operatorTokenFile: "/run/keys/hypervisor-operator-token",
  sandbox: { environment: { TZ: "UTC", FEATURES: "a;b" } },
};

/** { "sandbox.pids": 3 } → { sandbox: { pids: 3 } } */
function settingsFor(optionPath: string, value: unknown): Record<string, unknown> {
  const settings: Record<string, unknown> = { enable: true };
  const keys = optionPath.split(".");
  let node = settings;
  for (const key of keys.slice(0, -1)) {
    node = (node[key] ??= {}) as Record<string, unknown>;
  }
  node[keys.at(-1)!] = value;
  return settings;
}

function service(evaluation: ModuleEvaluation) {
  const unit = evaluation.config.systemd?.services?.hypervisor;
  assert.ok(unit, "the module defines systemd.services.hypervisor");
  return unit;
}

function hypervisorEnv(evaluation: ModuleEvaluation): Record<string, string | null> {
  return Object.fromEntries(Object.entries(service(evaluation).environment).filter(([name]) => name.startsWith("HYPERVISOR_")));
}

const optionName = (path: string): string => path.replace(/^services\.hypervisor\./, "");
/** The sandbox-host role configures a machine that runs sandboxes for a hypervisor elsewhere: it sets no variable of this daemon. */
const isDaemonOption = (path: string): boolean => !optionName(path).startsWith("sandboxHost.");

/**
 * Which HYPERVISOR_* variable each option sets, found by setting each option alone to its
 * sample value and seeing which variable changes. Asserts there is exactly one per option.
 */
function optionVariables(): { variableOf: Map<string, string>; before: Record<string, string | null>; options: ModuleEvaluation["options"] } {
  const [baseline] = evalModule([{ settings: { enable: true } }]);
  const daemonOptions = baseline!.options.filter((option) => isDaemonOption(option.path));
  const options = daemonOptions.map((option) => optionName(option.path)).filter((name) => name !== "enable");
  for (const name of options) assert.ok(name in sampleValues, `add a sample value for option ${name} to this test`);

  const evaluations = evalModule(options.map((name) => ({ settings: settingsFor(name, sampleValues[name]) })));
  const before = hypervisorEnv(baseline!);
  const variableOf = new Map<string, string>();
  options.forEach((name, i) => {
    const after = hypervisorEnv(evaluations[i]!);
    const changed = [...new Set([...Object.keys(before), ...Object.keys(after)])].filter(
      (variable) => JSON.stringify(before[variable]) !== JSON.stringify(after[variable]),
    );
    if (name in optionsWithoutVariable) {
      assert.deepEqual(changed, [], `option ${name} sets no variable (${optionsWithoutVariable[name]})`);
      return;
    }
    assert.equal(changed.length, 1, `option ${name} changes exactly one variable, changed: ${changed.join(", ") || "none"}`);
    const variable = changed[0]!;
    assert.ok(!variableOf.has(variable), `${variable} is set by both ${variableOf.get(variable)} and ${name}`);
    variableOf.set(variable, name);
  });
  return { variableOf, before, options: daemonOptions };
}

describe("flake and NixOS module (nix-instantiate, offline)", () => {
  it("parses every .nix file in the repository", (t) => {
    if (!withNix(t)) return;
    const files = repoFiles(".nix");
    const names = files.map((file) => relative(repoRoot, file));
    for (const expected of ["flake.nix", "deploy/nixos/module.nix", "deploy/hosts/example.nix"]) {
      assert.ok(names.includes(expected), `${expected} exists and is found`);
    }
    for (const file of files) {
      const result = run("nix-instantiate", ["--parse", file]);
      assert.equal(result.status, 0, `${relative(repoRoot, file)} parses:\n${result.stderr}`);
    }
  });

  it("evaluates the flake file to its inputs and an outputs function", (t) => {
    if (!withNix(t)) return;
    // Without network or nixpkgs the outputs cannot be called; the top level can be checked.
    const result = run("nix-instantiate", [
      "--eval",
      "--strict",
      "--json",
      "--store",
      "dummy://",
      "--option",
      "build-users-group",
      "",
      "--expr",
      "{ flake }: let f = import (/. + flake); in { inputs = builtins.attrNames f.inputs; outputsArgs = builtins.attrNames (builtins.functionArgs f.outputs); }",
      "--argstr",
      "flake",
      `${repoRoot}/flake.nix`,
    ]);
    assert.equal(result.status, 0, result.stderr);
    const flake = JSON.parse(result.stdout) as { inputs: string[]; outputsArgs: string[] };
    assert.deepEqual(flake.inputs, ["nixpkgs"]);
    assert.ok(flake.outputsArgs.includes("self") && flake.outputsArgs.includes("nixpkgs"));
  });

  it("pins a maintained nixpkgs release and no placeholder hash", () => {
    const flake = readFileSync(join(repoRoot, "flake.nix"), "utf8");
    const release = /inputs\.nixpkgs\.url = "github:NixOS\/nixpkgs\/nixos-(\d\d)\.(\d\d)"/.exec(flake);
    assert.ok(release, "nixpkgs follows a nixos-YY.MM release branch");
    assert.ok(Number(release[1]) * 100 + Number(release[2]) >= 2505, `nixos-${release[1]}.${release[2]} is end of life`);
    for (const file of repoFiles(".nix")) {
      assert.doesNotMatch(readFileSync(file, "utf8"), /fakeHash|fakeSha256/, `${relative(repoRoot, file)} builds without a placeholder hash`);
    }
  });

  it("gives importNpmLock a registry tarball URL for every locked package, each pinned by its integrity", (t) => {
    if (!withNix(t)) return;
    const result = run("nix-instantiate", [
      ...nixEvalArgs,
      "--expr",
      '{ root }: (import (/. + root + "/deploy/nix/npm-lock.nix") (builtins.fromJSON (builtins.readFile (/. + root + "/package-lock.json")))).packages',
      "--argstr",
      "root",
      repoRoot,
    ]);
    assert.equal(result.status, 0, result.stderr);
    const packages = JSON.parse(result.stdout) as Record<string, { version?: string; resolved?: string; integrity?: string }>;
    const locked = Object.keys(JSON.parse(readFileSync(join(repoRoot, "package-lock.json"), "utf8")).packages as object);
    assert.deepEqual(Object.keys(packages).sort(), locked.sort(), "no package added or lost");
    for (const [path, module] of Object.entries(packages)) {
      if (path === "") continue;
      const name = path.slice(path.lastIndexOf("node_modules/") + "node_modules/".length);
      const unscoped = name.slice(name.lastIndexOf("/") + 1);
      assert.equal(module.resolved, `https://registry.npmjs.org/${name}/-/${unscoped}-${module.version}.tgz`, path);
      assert.match(module.integrity ?? "", /^sha512-/, `${path} is pinned by its integrity hash`);
    }
    // A nested, scoped package: the name after the last node_modules/, the tarball unscoped.
    assert.match(packages["node_modules/@grpc/grpc-js/node_modules/@grpc/proto-loader"]!.resolved!, /\/@grpc\/proto-loader\/-\/proto-loader-[\d.]+\.tgz$/);
  });

  it("declares every option with a type, a default that passes it, and a description", (t) => {
    if (!withNix(t)) return;
    const [baseline] = evalModule([{ settings: { enable: true } }]);
    assert.ok(baseline!.options.length >= 20, `found ${baseline!.options.length} options`);
    for (const option of baseline!.options) {
      assert.ok(option.type, `${option.path} has a type`);
      assert.ok(option.hasDefault, `${option.path} has a default`);
      assert.ok(option.defaultPassesCheck, `${option.path}: the default passes the option's type`);
      assert.ok(option.description.trim().length > 10, `${option.path} has a description`);
    }
  });

  it("defines nothing when the service is disabled", (t) => {
    if (!withNix(t)) return;
    const [disabled] = evalModule([{ settings: {} }]);
    assert.deepEqual(disabled!.config, {});
    assert.deepEqual(disabled!.failedAssertions, []);
  });

  it("maps each option to exactly one HYPERVISOR_* variable of the config module", (t) => {
    if (!withNix(t)) return;
    const { variableOf, before } = optionVariables();
    // The module sets no HYPERVISOR_* variable that no option controls.
    assert.deepEqual(Object.keys(before).sort(), [...variableOf.keys()].sort());

    const known = new Set<string>(configVariables.map((variable) => variable.name));
    for (const variable of variableOf.keys()) {
      assert.ok(known.has(variable), `${variable} (option ${variableOf.get(variable)}) is a variable of hypervisor/config.ts`);
    }
    for (const { name } of configVariables) {
      assert.ok(variableOf.has(name) || name in variablesWithoutOption, `config variable ${name} has a module option`);
    }
  });

  it("refuses in evaluation every value the config module's bounds refuse, and takes the bounds themselves", (t) => {
    if (!withNix(t)) return;
    const { variableOf, options } = optionVariables();
    const bounded = new Set<string>(configVariables.filter((v) => "bounds" in v).map((v) => v.name));
    // A numeric option whose variable has no bounds in the table would go unchecked here.
    for (const option of options.filter((o) => /Int\b|intBetween/.test(o.type))) {
      const variable = [...variableOf].find(([, name]) => name === optionName(option.path))?.[0];
      assert.ok(variable && bounded.has(variable), `${option.path} (${option.type}) maps to a variable with bounds in hypervisor/config.ts`);
    }

    const cases: { option: string; value: unknown; accepted: boolean }[] = [];
    for (const name of bounded) {
      const option = variableOf.get(name);
      assert.ok(option, `${name} has a module option`);
      const { kind, min, max } = boundsOf(name as BoundedVariable);
      // Integers as Nix integers; sizes (bytes, no suffix) and CPUs as the strings the options take.
      const value = (n: number): unknown => (kind === "integer" ? n : String(n));
      const below = kind === "decimal" ? min * 0.99 : min - 1;
      cases.push({ option, value: value(min), accepted: true });
      if (below >= 0) cases.push({ option, value: value(below), accepted: false });
      if (max !== undefined) cases.push({ option, value: value(max), accepted: true }, { option, value: value(max + 1), accepted: false });
    }
    const verdicts = moduleVerdicts(cases.map((c) => ({ settings: settingsFor(c.option, c.value) })));
    cases.forEach((c, i) => {
      const verdict = verdicts[i]!;
      const refused = verdict.typeError || verdict.failedAssertions.length > 0;
      assert.equal(refused, !c.accepted, `${c.option} = ${JSON.stringify(c.value)} is ${c.accepted ? "accepted" : "refused"}: ${JSON.stringify(verdict)}`);
    });
  });

  it("starts from the config module's defaults, except where a server differs on purpose", (t) => {
    if (!withNix(t)) return;
    const [baseline] = evalModule([{ settings: { enable: true } }]);
    const env = hypervisorEnv(baseline!);
    for (const variable of configVariables) {
      const value = env[variable.name];
      // null leaves the variable unset, so the config module's own default applies.
      if (value === null || value === undefined || variable.default === undefined) continue;
      if (variable.name in serverDefaults) {
        assert.notEqual(value, variable.default, `${variable.name} is listed as a server default but equals npm start's`);
        continue;
      }
      assert.equal(value, variable.default, `${variable.name}: module default equals hypervisor/config.ts`);
    }
  });

  it("passes the operator token only as a systemd credential, never as a value", (t) => {
    if (!withNix(t)) return;
    const [evaluation] = evalModule([{ settings: production }]);
    const unit = service(evaluation!);
    assert.equal(unit.environment.HYPERVISOR_OPERATOR_TOKEN_FILE, "%d/operator-token");
    assert.deepEqual(unit.serviceConfig.LoadCredential, ["operator-token:/run/keys/hypervisor-operator-token"]);
    // The host path appears once, in LoadCredential=, and nowhere the daemon would read it from.
    const occurrences = JSON.stringify(evaluation!.config).split("/run/keys/hypervisor-operator-token").length - 1;
    assert.equal(occurrences, 1);
    for (const variable of configVariables.filter((v) => "secret" in v && v.secret)) {
      const value = unit.environment[variable.name];
      assert.ok(value === null || value === undefined || value.startsWith("%d/"), `secret ${variable.name} arrives as a credential path, got ${value}`);
    }
    // The ssh:// hosts' key the same way, beside the token.
    const [withKey] = evalModule([{ settings: { ...production, sshKeyFile: "/run/keys/hypervisor-ssh-key" } }]);
    assert.equal(service(withKey!).environment.HYPERVISOR_SSH_KEY_FILE, "%d/ssh-key");
    assert.deepEqual(service(withKey!).serviceConfig.LoadCredential, [
      "operator-token:/run/keys/hypervisor-operator-token",
      "ssh-key:/run/keys/hypervisor-ssh-key",
    ]);
  });

  it("passes the egress routes file, the routes' secrets and the user-key key only as credentials", (t) => {
    if (!withNix(t)) return;
    const egress = {
      egressRoutesFile: "/etc/hypervisor/egress-routes.json",
      egressSecrets: { openai: "/run/keys/hypervisor-egress-openai" },
      egressSecretsKeyFile: "/run/keys/hypervisor-egress-secrets-key",
    };
    const [evaluation] = evalModule([{ settings: { ...production, ...egress } }]);
    const unit = service(evaluation!);
    assert.equal(unit.environment.HYPERVISOR_EGRESS_ROUTES_FILE, "%d/egress-routes");
    assert.equal(unit.environment.HYPERVISOR_EGRESS_SECRETS_KEY_FILE, "%d/egress-secrets-key");
    assert.deepEqual(unit.serviceConfig.LoadCredential, [
      "operator-token:/run/keys/hypervisor-operator-token",
      "egress-routes:/etc/hypervisor/egress-routes.json",
      "egress-secrets-key:/run/keys/hypervisor-egress-secrets-key",
      "egress-openai:/run/keys/hypervisor-egress-openai",
    ]);
    const text = JSON.stringify(evaluation!.config);
    assert.equal(text.split("/run/keys/hypervisor-egress-openai").length - 1, 1, "the secret's path is in LoadCredential= only");
    const [inStore] = evalModule([{ settings: { ...production, egressSecrets: { openai: "/nix/store/0000-openai" } } }]);
    assert.ok(inStore!.failedAssertions.some((m) => /egressSecrets must be absolute paths outside the Nix store/.test(m)));
  });

  it("refuses a token file that would be copied into the Nix store", (t) => {
    if (!withNix(t)) return;
    // A path literal is copied into the store when interpolated; the option type refuses it.
    const literal = evalModuleNixExpr("{ enable = true; operatorTokenFile = /run/keys/hypervisor-operator-token; }");
    assert.notEqual(literal.status, 0);
    assert.match(literal.stderr, /operatorTokenFile' is not of type/);
    // "${./token}" is a string naming a store path; an assertion refuses it.
    const [interpolated] = evalModule([{ settings: { enable: true, operatorTokenFile: "/nix/store/0000-operator-token" } }]);
    assert.ok(interpolated!.failedAssertions.some((m) => m.includes("operatorTokenFile must be an absolute path outside the Nix store")));
  });

  it("fails evaluation with a message for each invalid combination", (t) => {
    if (!withNix(t)) return;
    const cases: { name: string; settings: Record<string, unknown>; host?: Record<string, unknown>; message: RegExp }[] = [
      {
        name: "operator TCP listener without a token",
        settings: { operatorListen: "127.0.0.1:9090" },
        message: /operatorListen needs services.hypervisor.operatorTokenFile/,
      },
      {
        name: "operator and users on one listener",
        settings: { operatorListen: "127.0.0.1:8080", operatorTokenFile: "/run/keys/t" },
        message: /operatorListen must differ from listen/,
      },
      {
        name: "podman runtime without podman",
        settings: { runtime: "podman" },
        host: { virtualisation: { podman: { enable: false } } },
        message: /needs virtualisation.podman.enable/,
      },
      { name: "open firewall for a loopback listener", settings: { openFirewall: true }, message: /openFirewall is set but listen/ },
      { name: "public origin without a scheme", settings: { publicOrigin: "sandbox.example.org" }, message: /publicOrigin must be an origin/ },
      { name: "public origin with a path", settings: { publicOrigin: "https://sandbox.example.org/app" }, message: /publicOrigin must be an origin/ },
      {
        name: "RP ID not a suffix of the origin host",
        settings: { publicOrigin: "https://sandbox.example.org", rpId: "other.org" },
        message: /rpId .* must be the host of publicOrigin/,
      },
      { name: "listen without a port", settings: { listen: "127.0.0.1" }, message: /listen must be host:port/ },
      { name: "relative token file", settings: { operatorTokenFile: "operator-token" }, message: /operatorTokenFile must be an absolute path/ },
      {
        name: "environment file in the store",
        settings: { environmentFile: "/nix/store/0000-hypervisor.env" },
        message: /environmentFile must be an absolute path outside the Nix store/,
      },
      { name: "state dir in the store", settings: { stateDir: "/nix/store/0000-state" }, message: /stateDir must be an absolute path outside the Nix store/ },
      {
        name: "sandbox data inside the state dir",
        settings: { stateDir: "/srv/hv", sandbox: { dataDir: "/srv/hv/sandboxes" } },
        message: /sandbox\.dataDir must be .* outside stateDir and not containing it/,
      },
      {
        name: "sandbox data containing the state dir",
        settings: { stateDir: "/srv/hv/state", sandbox: { dataDir: "/srv/hv" } },
        message: /sandbox\.dataDir must be/,
      },
      { name: "invalid sandbox variable name", settings: { sandbox: { environment: { "A-B": "1" } } }, message: /invalid or reserved names: A-B/ },
      {
        name: "sandbox variable shadowing the contract",
        settings: { sandbox: { environment: { HYPERVISOR_USER: "x", PORT: "1" } } },
        message: /reserved names: HYPERVISOR_USER, PORT/,
      },
      { name: "comma in a sandbox value", settings: { sandbox: { environment: { LIST: "a,b" } } }, message: /values of LIST contain a comma/ },
      { name: "sandbox memory below the daemon's minimum", settings: { sandbox: { memory: "5.9m" } }, message: /sandbox.memory must be at least 6m/ },
      { name: "sandbox CPUs below the daemon's minimum", settings: { sandbox: { cpus: "0.005" } }, message: /sandbox.cpus must be at least 0.01/ },
    ];
    const evaluations = evalModule(cases.map((c) => ({ settings: { enable: true, ...c.settings }, host: c.host ?? {} })));
    cases.forEach((c, i) => {
      const failed = evaluations[i]!.failedAssertions;
      assert.ok(
        failed.some((message) => c.message.test(message)),
        `${c.name}: expected an assertion matching ${c.message}, got ${JSON.stringify(failed)}`,
      );
    });
    const [valid] = evalModule([{ settings: production }]);
    assert.deepEqual(valid!.failedAssertions, []);
    assert.deepEqual(valid!.warnings, []);
  });

  it("refuses unknown options and values of the wrong type", (t) => {
    if (!withNix(t)) return;
    const unknown = evalModuleNixExpr('{ enable = true; listenAddress = "0.0.0.0:80"; }');
    assert.notEqual(unknown.status, 0);
    assert.match(unknown.stderr, /option `services.hypervisor.listenAddress' does not exist/);
    const wrongType = evalModuleNixExpr('{ enable = true; runtime = "docker"; }');
    assert.notEqual(wrongType.status, 0);
    assert.match(wrongType.stderr, /runtime' is not of type `enum'/);
  });

  it("enables Podman's API socket and runs after it only for the podman runtime", (t) => {
    if (!withNix(t)) return;
    const [podman, processRuntime] = evalModule([{ settings: production }, { settings: { ...production, runtime: "process" } }]);
    const config = podman!.config as Record<string, any>;
    assert.equal(config.virtualisation.podman.enable, true);
    assert.deepEqual(config.systemd.sockets.podman.wantedBy, ["sockets.target"]);
    assert.ok(service(podman!).wants.includes("podman.socket"));
    assert.ok(service(podman!).after.includes("podman.socket"));
    assert.ok(!("requires" in service(podman!)), "wants, never requires: a restart of podman.socket does not stop the daemon");
    assert.deepEqual(config.users.users.hypervisor.extraGroups, ["podman"]);
    assert.ok(!config.virtualisation.containers.containersConf.settings.containers.default_ulimits.some((l: string) => l.startsWith("nproc=")));

    const other = processRuntime!.config as Record<string, any>;
    assert.equal(other.virtualisation, undefined);
    assert.ok(!service(processRuntime!).wants.includes("podman.socket"));
    assert.deepEqual(other.users.users.hypervisor.extraGroups, []);
  });

  it("socket-activates the daemon: one socket unit per descriptor name, at the listen address and operator socket", (t) => {
    if (!withNix(t)) return;
    const [defaults, custom] = evalModule([
      { settings: production },
      { settings: { ...production, listen: "[::]:8443", stateDir: "/srv/hypervisor", shutdownGraceMs: 2500 } },
    ]);
    for (const [evaluation, listen, operatorSocket] of [
      [defaults!, "127.0.0.1:8080", "/var/lib/hypervisor/operator.sock"],
      [custom!, "[::]:8443", "/srv/hypervisor/operator.sock"],
    ] as const) {
      const sockets = (evaluation.config as Record<string, any>).systemd.sockets;
      assert.deepEqual(sockets.hypervisor.listenStreams, [listen]);
      assert.deepEqual(sockets["hypervisor-operator"].listenStreams, [operatorSocket]);
      assert.equal(sockets.hypervisor.socketConfig.FileDescriptorName, "public");
      assert.equal(sockets["hypervisor-operator"].socketConfig.FileDescriptorName, "operator");
      assert.equal(sockets["hypervisor-operator"].socketConfig.SocketMode, "0600");
      for (const name of ["hypervisor", "hypervisor-operator"]) {
        assert.equal(sockets[name].socketConfig.Service, "hypervisor.service");
        assert.deepEqual(sockets[name].wantedBy, ["sockets.target"]);
      }
      assert.equal(service(evaluation).serviceConfig.Sockets, "hypervisor.socket hypervisor-operator.socket");
    }
    assert.equal(service(custom!).serviceConfig.TimeoutStopSec, "13s", "the grace, rounded up, plus a margin");
  });

  it("renders the sandbox environment as K=V,K2=V2 and opens only the listen port", (t) => {
    if (!withNix(t)) return;
    const [evaluation] = evalModule([{ settings: { ...production, listen: "0.0.0.0:8443", openFirewall: true } }]);
    assert.equal(service(evaluation!).environment.HYPERVISOR_SANDBOX_ENV, "FEATURES=a;b,TZ=UTC");
    assert.deepEqual((evaluation!.config as Record<string, any>).networking.firewall.allowedTCPPorts, [8443]);
  });

  it("doubles % in every Environment= value it writes but the credential path, which means its specifier", (t) => {
    if (!withNix(t)) return;
    const [evaluation] = evalModule([{ settings: { ...production, sandbox: { environment: { RATIO: "50%", TZ: "UTC" } } } }]);
    const env = service(evaluation!).environment;
    assert.equal(env.HYPERVISOR_SANDBOX_ENV, "RATIO=50%%,TZ=UTC");
    assert.equal(env.HYPERVISOR_OPERATOR_TOKEN_FILE, "%d/operator-token");
    const unescaped = Object.entries(env).filter(
      ([name, value]) => name !== "HYPERVISOR_OPERATOR_TOKEN_FILE" && value !== null && /%(?!%)/.test(value.replace(/%%/g, "")),
    );
    assert.deepEqual(unescaped, []);
  });

  it("has the operator socket and its directory made by its socket unit, so the daemon writes only its state dir", (t) => {
    if (!withNix(t)) return;
    const [evaluation] = evalModule([{ settings: { ...production, operatorSocket: "/run/hypervisor/operator.sock" } }]);
    const config = evaluation!.config as Record<string, any>;
    assert.deepEqual(config.systemd.sockets["hypervisor-operator"].listenStreams, ["/run/hypervisor/operator.sock"]);
    assert.equal(config.systemd.sockets["hypervisor-operator"].socketConfig.DirectoryMode, "0700");
    assert.deepEqual(service(evaluation!).serviceConfig.ReadWritePaths, ["/var/lib/hypervisor"]);
    assert.deepEqual(evaluation!.failedAssertions, []);
  });

  it("carries the same hardening as deploy/systemd/hypervisor.service", (t) => {
    if (!withNix(t)) return;
    const [evaluation] = evalModule([{ settings: production }]);
    const nixos = service(evaluation!);
    const debian = parseUnit(readFileSync(debianUnitPath, "utf8"));
    const debianService = debian.sections.get("Service")!;
    // Paths and identities of the host's layout, not hardening.
    const hostSpecific = new Set([
      "ExecStart",
      "ExecReload",
      "WorkingDirectory",
      "StateDirectory",
      "ReadWritePaths",
      "LoadCredential",
      "EnvironmentFile",
      "Environment",
    ]);
    // systemd reads yes/true and no/false alike; lists accumulate, so compare the words.
    const words = (values: readonly unknown[]): string[] =>
      values
        .flatMap((value) => String(value === true ? "yes" : value === false ? "no" : value).split(/\s+/))
        .map((word) => (word === "true" ? "yes" : word === "false" ? "no" : word))
        .filter((word) => word !== "");
    const nixosKeys = Object.keys(nixos.serviceConfig)
      .filter((key) => !hostSpecific.has(key))
      .sort();
    const debianKeys = [...debianService.keys()].filter((key) => !hostSpecific.has(key)).sort();
    assert.deepEqual(nixosKeys, debianKeys, "both units set the same directives");
    for (const key of nixosKeys) {
      const value = nixos.serviceConfig[key];
      assert.deepEqual(words(Array.isArray(value) ? value : [value]), words(debianService.get(key)!), `${key} is the same in both units`);
    }
    const debianUnit = debian.sections.get("Unit")!;
    assert.deepEqual([...nixos.wants].sort(), words(debianUnit.get("Wants") ?? []).sort());
    assert.deepEqual([...nixos.after].sort(), words(debianUnit.get("After") ?? []).sort());
    assert.equal(String(nixos.startLimitIntervalSec), debianUnit.get("StartLimitIntervalSec")?.[0]);
    assert.equal(String(nixos.startLimitBurst), debianUnit.get("StartLimitBurst")?.[0]);
  });

  describe("sandbox-host role", () => {
    const sshHost = { sandboxHost: { enable: true, hypervisorAddress: "10.0.0.1", authorizedKeysFile: "/etc/hypervisor/hypervisor.pub" } };
    const tcpHost = { sandboxHost: { enable: true, hypervisorAddress: "10.0.0.1", transport: "tcp", apiListen: "10.0.0.2:8888" } };

    it("runs no daemon: Podman's API socket, and over ssh a dedicated podman user who may forward that socket only, with the key file the host provides", (t) => {
      if (!withNix(t)) return;
      const [evaluation] = evalModule([{ settings: sshHost }]);
      const config = evaluation!.config as Record<string, any>;
      assert.deepEqual(evaluation!.failedAssertions, []);
      assert.equal(config.systemd.services?.hypervisor, undefined, "the daemon role stays off");
      assert.equal(config.virtualisation.podman.enable, true);
      assert.deepEqual(config.systemd.sockets.podman.wantedBy, ["sockets.target"]);
      assert.deepEqual(config.users.users["hypervisor-remote"].extraGroups, ["podman"]);
      assert.equal(config.services.openssh.enable, true);
      const sshd = config.services.openssh.extraConfig as string;
      assert.match(sshd, /^Match User hypervisor-remote$/m);
      assert.match(sshd, /^\s+AuthorizedKeysFile \/etc\/hypervisor\/hypervisor\.pub$/m);
      for (const line of ["AllowStreamLocalForwarding local", "AllowTcpForwarding no", "PermitTTY no", "AuthenticationMethods publickey"]) {
        assert.match(sshd, new RegExp(`^\\s+${line}$`, "m"));
      }
      assert.ok(!JSON.stringify(config).includes("podman-api-tcp"), "no TCP listener with the ssh transport");
    });

    it("admits new connections to the published ports from the hypervisor's address only, before Podman's DNAT, and to sshd", (t) => {
      if (!withNix(t)) return;
      const [evaluation] = evalModule([{ settings: sshHost }]);
      const firewall = (evaluation!.config as Record<string, any>).networking.firewall;
      assert.equal(firewall.enable, true);
      const rules = (firewall.extraCommands as string).split("\n").filter(Boolean);
      const match = "-p tcp --dport 32768:60999 -m addrtype --dst-type LOCAL -m conntrack --ctstate NEW";
      assert.deepEqual(
        rules.filter((r) => r.includes(match)),
        [
          `iptables -w -t mangle -A hypervisor-sandbox-host ${match} -s 10.0.0.1 -j RETURN`,
          `iptables -w -t mangle -A hypervisor-sandbox-host ${match} -j DROP`,
          // The hypervisor has an IPv4 address: over IPv6 nobody is admitted.
          `ip6tables -w -t mangle -A hypervisor-sandbox-host ${match} -j DROP`,
        ],
      );
      assert.ok(
        rules.some((r) => r.includes("-t mangle -I PREROUTING -j hypervisor-sandbox-host")),
        "the chain is jumped to from PREROUTING",
      );
      assert.ok(rules.includes("iptables -w -I nixos-fw -p tcp --dport 22 -s 10.0.0.1 -j nixos-fw-accept"));
      assert.match(firewall.extraStopCommands, /iptables -w -t mangle -D PREROUTING -j hypervisor-sandbox-host/);
    });

    it("writes the same admission as nftables rules on an nftables host, for an IPv6 hypervisor too", (t) => {
      if (!withNix(t)) return;
      const host = { networking: { nftables: { enable: true } } };
      const [v4, v6] = evalModule([
        { settings: sshHost, host },
        { settings: { sandboxHost: { ...sshHost.sandboxHost, hypervisorAddress: "fd00::1" } }, host },
      ]);
      for (const [evaluation, saddr] of [
        [v4!, "ip saddr 10.0.0.1"],
        [v6!, "ip6 saddr fd00::1"],
      ] as const) {
        const networking = (evaluation.config as Record<string, any>).networking;
        assert.equal(networking.firewall.extraCommands, undefined, "no iptables commands on an nftables host");
        const table = networking.nftables.tables["hypervisor-sandbox-host"];
        assert.equal(table.family, "inet");
        const lines = (table.content as string).split("\n").map((l: string) => l.trim());
        assert.ok(lines.includes("type filter hook prerouting priority mangle; policy accept;"));
        assert.deepEqual(
          lines.filter((l: string) => l.startsWith("tcp dport")),
          [`tcp dport 32768-60999 fib daddr type local ct state new ${saddr} accept`, "tcp dport 32768-60999 fib daddr type local ct state new drop"],
        );
        assert.equal(networking.firewall.extraInputRules, `tcp dport 22 ${saddr} accept`);
      }
    });

    it("holds the sandboxes' egress with the very rules of deploy/sandbox-host/firewall.sh, in every mode", (t) => {
      if (!withNix(t)) return;
      if (process.getuid?.() !== 0) return t.skip("needs root: network namespaces and iptables");
      const modes = [
        { mode: "gateway", gateway: "10.0.0.1:3129" },
        { mode: "gateway", gateway: "[fd00::1]:3129" },
        { mode: "none", gateway: null },
        { mode: "open", gateway: null },
      ];
      const evaluations = evalModule(modes.map((egress) => ({ settings: { sandboxHost: { ...sshHost.sandboxHost, egress } } })));
      const id = `hvnix${process.pid.toString(36)}`;
      const must = (args: string[], env: Record<string, string> = {}) => {
        const result = run("ip", args, repoRoot, env);
        assert.equal(result.status, 0, `ip ${args.join(" ")}: ${result.stderr}`);
        return result.stdout;
      };
      const rulesIn = (netns: string) => ["iptables", "ip6tables"].map((tool) => must(["netns", "exec", netns, tool, "-w", "-t", "mangle", "-S"])).join("");
      for (const [i, egress] of modes.entries()) {
        assert.deepEqual(evaluations[i]!.failedAssertions, [], JSON.stringify(egress));
        const firewall = (evaluations[i]!.config as Record<string, any>).networking.firewall;
        // The role's mangle rules (the nixos-fw admission of sshd is the NixOS firewall's own chain).
        const nixos = (firewall.extraCommands as string)
          .split("\n")
          .filter((l) => l.includes(" -t mangle "))
          .join("\n");
        try {
          must(["netns", "add", `${id}a`]);
          must(["netns", "add", `${id}b`]);
          must(["netns", "exec", `${id}a`, "sh", "-ec", nixos]);
          must(["netns", "exec", `${id}b`, "sh", join(repoRoot, "deploy/sandbox-host/firewall.sh"), "start"], {
            HYPERVISOR_ADDRESS: "10.0.0.1",
            PUBLISHED_PORTS: "32768:60999",
            HYPERVISOR_EGRESS: egress.mode,
            HYPERVISOR_EGRESS_GATEWAY: egress.gateway ?? "",
          });
          const made = rulesIn(`${id}a`);
          assert.match(made, /-A FORWARD -i cni-podman\+ -j hypervisor-sandbox-out/);
          assert.equal(made, rulesIn(`${id}b`), JSON.stringify(egress));
          // And both stop to nothing.
          must(["netns", "exec", `${id}a`, "sh", "-c", firewall.extraStopCommands as string]);
          must(["netns", "exec", `${id}b`, "sh", join(repoRoot, "deploy/sandbox-host/firewall.sh"), "stop"]);
          assert.doesNotMatch(rulesIn(`${id}a`), /hypervisor-sandbox/);
          assert.equal(rulesIn(`${id}a`), rulesIn(`${id}b`));
        } finally {
          run("ip", ["netns", "del", `${id}a`]);
          run("ip", ["netns", "del", `${id}b`]);
        }
      }
      const [nft] = evalModule([
        { settings: { sandboxHost: { ...sshHost.sandboxHost, egress: modes[0] } }, host: { networking: { nftables: { enable: true } } } },
      ]);
      const lines = ((nft!.config as Record<string, any>).networking.nftables.tables["hypervisor-sandbox-host"].content as string)
        .split("\n")
        .map((l) => l.trim());
      for (const line of [
        "type filter hook forward priority mangle; policy accept;",
        'iifname "cni-podman*" jump sandbox-out-rules',
        'iifname "podman*" jump sandbox-out-rules',
        "ip daddr 10.0.0.1 tcp dport 3129 return",
        "type filter hook input priority mangle; policy accept;",
      ])
        assert.ok(lines.includes(line), line);
    });

    it("serves the API on a private address over tcp, admits the hypervisor alone to its port, and warns", (t) => {
      if (!withNix(t)) return;
      const [evaluation] = evalModule([{ settings: { ...tcpHost, sandboxHost: { ...tcpHost.sandboxHost, publishedPorts: { from: 40000, to: 40999 } } } }]);
      const config = evaluation!.config as Record<string, any>;
      assert.deepEqual(evaluation!.failedAssertions, []);
      assert.match(config.systemd.services["podman-api-tcp"].serviceConfig.ExecStart, /\/bin\/podman system service --time=0 tcp:\/\/10\.0\.0\.2:8888$/);
      assert.equal(config.users?.users?.["hypervisor-remote"], undefined, "no ssh user with the tcp transport");
      const rules = config.networking.firewall.extraCommands as string;
      assert.ok(rules.includes("iptables -w -I nixos-fw -p tcp --dport 8888 -s 10.0.0.1 -j nixos-fw-accept"));
      assert.ok(rules.includes("--dport 40000:40999"), "the published range is the one configured");
      assert.ok(!rules.includes("--dport 22 "), "sshd is not this role's business over tcp");
      assert.ok(evaluation!.warnings.some((w) => /no authentication and no encryption/.test(w)));
    });

    it("fails evaluation with a message for each incomplete or unsafe setup", (t) => {
      if (!withNix(t)) return;
      const cases: { name: string; sandboxHost: Record<string, unknown>; message: RegExp }[] = [
        { name: "no hypervisor address", sandboxHost: { enable: true, authorizedKeysFile: "/etc/hv.pub" }, message: /hypervisorAddress must be set/ },
        { name: "ssh without a key file", sandboxHost: { enable: true, hypervisorAddress: "10.0.0.1" }, message: /needs authorizedKeysFile/ },
        {
          name: "a key file in the Nix store",
          sandboxHost: { enable: true, hypervisorAddress: "10.0.0.1", authorizedKeysFile: "/nix/store/00000000000000000000000000000000-key.pub" },
          message: /outside the Nix store/,
        },
        { name: "tcp without apiListen", sandboxHost: { enable: true, hypervisorAddress: "10.0.0.1", transport: "tcp" }, message: /needs apiListen/ },
        {
          name: "tcp on every address",
          sandboxHost: { enable: true, hypervisorAddress: "10.0.0.1", transport: "tcp", apiListen: "0.0.0.0:8888" },
          message: /not a wildcard/,
        },
        {
          name: "tcp on loopback",
          sandboxHost: { enable: true, hypervisorAddress: "10.0.0.1", transport: "tcp", apiListen: "127.0.0.1:8888" },
          message: /not loopback/,
        },
        {
          name: "gateway egress without the gateway",
          sandboxHost: { ...sshHost.sandboxHost, egress: { mode: "gateway" } },
          message: /needs egress\.gateway/,
        },
        {
          name: "an empty port range",
          sandboxHost: { ...sshHost.sandboxHost, publishedPorts: { from: 50000, to: 40000 } },
          message: /from \(50000\) must not be above to \(40000\)/,
        },
      ];
      const verdicts = moduleVerdicts(cases.map((c) => ({ settings: { sandboxHost: c.sandboxHost } })));
      cases.forEach((c, i) => {
        const { typeError, failedAssertions } = verdicts[i]!;
        assert.equal(typeError, false, `${c.name}: a type error instead of an assertion`);
        assert.ok(
          failedAssertions.some((m) => c.message.test(m)),
          `${c.name}: expected ${c.message}, got ${JSON.stringify(failedAssertions)}`,
        );
      });
      const [address] = moduleVerdicts([{ settings: { sandboxHost: { ...sshHost.sandboxHost, hypervisorAddress: "hypervisor.example.org" } } }]);
      assert.equal(address!.typeError, true, "a name is not an address");
    });
  });
});

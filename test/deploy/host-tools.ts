// Shared by the deploy tests: where the repository is, and running the host tools they need
// (nix-instantiate from Debian's nix-bin, systemd-analyze from systemd).
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";

/** The repository root: the nearest directory above this file holding package.json (works from
 * test/deploy/ and from the compiled dist/test/deploy/). */
export const repoRoot: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error("no package.json above " + fileURLToPath(import.meta.url));
    dir = parent;
  }
  return dir;
})();

export interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function run(command: string, args: readonly string[], cwd = repoRoot, env: Record<string, string> = {}): RunResult {
  // The module evaluation prints every option as JSON: past spawnSync's default 1 MiB buffer.
  const result = spawnSync(command, args, { cwd, encoding: "utf8", maxBuffer: 64 * 1024 ** 2, env: { ...process.env, LC_ALL: "C.UTF-8", ...env } });
  if (result.error) throw result.error;
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

export function hasTool(command: string): boolean {
  const result = spawnSync(command, ["--version"], { encoding: "utf8" });
  return !result.error;
}

/**
 * Skips the test when a host tool is missing, except in CI, where a missing tool fails the
 * test: a deploy check must never pass silently because nothing ran.
 * Returns true when the test may proceed.
 */
export function requireTool(t: TestContext, command: string, installHint: string): boolean {
  if (hasTool(command)) return true;
  const message = `${command} is not installed (${installHint})`;
  if (process.env.CI === "true") assert.fail(`${message}; CI must run this check`);
  t.skip(message);
  return false;
}

/** Every file below the repository root with this suffix, skipping installed and built trees. */
export function repoFiles(suffix: string): string[] {
  const skip = new Set(["node_modules", "dist", ".git", "var", ".bench", "result"]);
  const found: string[] = [];
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (entry.isDirectory()) {
        if (!skip.has(entry.name)) walk(join(dir, entry.name));
      } else if (entry.isFile() && entry.name.endsWith(suffix)) {
        found.push(join(dir, entry.name));
      }
    }
  };
  walk(repoRoot);
  return found.sort();
}

export const nixEvalArgs = ["--eval", "--strict", "--json", "--store", "dummy://", "--option", "build-users-group", ""];

/** What eval-module.nix returns for one set of `services.hypervisor` settings. */
export interface ModuleEvaluation {
  options: { path: string; type: string; description: string; hasDefault: boolean; defaultPassesCheck: boolean; default: unknown }[];
  failedAssertions: string[];
  warnings: string[];
  config: {
    systemd?: {
      services?: {
        hypervisor?: {
          environment: Record<string, string | null>;
          serviceConfig: Record<string, unknown>;
          after: string[];
          wants: string[];
          wantedBy: string[];
          description: string;
          startLimitIntervalSec?: number;
          startLimitBurst?: number;
        };
      };
    };
    [key: string]: unknown;
  };
}

export interface EvalInput {
  settings: Record<string, unknown>;
  host?: Record<string, unknown>;
}

/** Evaluates the NixOS module offline (test/deploy/fixtures/eval-module.nix), many settings in one run. */
export function evalModule(inputs: readonly EvalInput[]): ModuleEvaluation[] {
  const evaluator = join(repoRoot, "test/deploy/fixtures/eval-module.nix");
  // The evaluator's path arrives as a string (it may hold characters a path literal cannot).
  const expr = "{ json, evaluator }: map (i: import (/. + evaluator) { settings = i.settings; host = i.host or { }; }) (builtins.fromJSON json)";
  const result = run("nix-instantiate", [...nixEvalArgs, "--expr", expr, "--argstr", "json", JSON.stringify(inputs), "--argstr", "evaluator", evaluator]);
  if (result.status !== 0) throw new Error(`nix-instantiate failed:\n${result.stderr}`);
  return JSON.parse(result.stdout) as ModuleEvaluation[];
}

/** Whether the module takes one set of settings: an option's type refuses it (which aborts a real evaluation) or assertions fail. */
export interface ModuleVerdict {
  typeError: boolean;
  failedAssertions: string[];
}

/**
 * Like evalModule, but a value refused by its option's type is a verdict, not an error of the
 * whole run: tryEval catches the throw, so many settings, valid or not, go in one run.
 */
export function moduleVerdicts(inputs: readonly EvalInput[]): ModuleVerdict[] {
  const evaluator = join(repoRoot, "test/deploy/fixtures/eval-module.nix");
  const expr = [
    "{ json, evaluator }: map (i:",
    "  let r = builtins.tryEval (let e = import (/. + evaluator) { settings = i.settings; host = i.host or { }; }; in builtins.deepSeq e e);",
    "  in if r.success then { typeError = false; failedAssertions = r.value.failedAssertions; } else { typeError = true; failedAssertions = [ ]; }",
    ") (builtins.fromJSON json)",
  ].join("\n");
  const result = run("nix-instantiate", [...nixEvalArgs, "--expr", expr, "--argstr", "json", JSON.stringify(inputs), "--argstr", "evaluator", evaluator]);
  if (result.status !== 0) throw new Error(`nix-instantiate failed:\n${result.stderr}`);
  return JSON.parse(result.stdout) as ModuleVerdict[];
}

/** Evaluates the module with settings written as a Nix expression; returns the raw result. */
export function evalModuleNixExpr(settingsExpr: string): RunResult {
  const evaluator = join(repoRoot, "test/deploy/fixtures/eval-module.nix");
  return run("nix-instantiate", [...nixEvalArgs, evaluator, "--arg", "settings", settingsExpr]);
}

export const systemdDir = join(repoRoot, "deploy/systemd");
export const debianUnitPath = join(systemdDir, "hypervisor.service");
/** The socket units the service takes its listeners from (DESIGN §7a), by descriptor name. */
export const debianSocketPaths = {
  public: join(systemdDir, "hypervisor.socket"),
  operator: join(systemdDir, "hypervisor-operator.socket"),
} as const;
export const operatorTcpDropInPath = join(systemdDir, "hypervisor.service.d/operator-tcp.conf");

/** The units versioned in deploy/systemd, and the drop-ins beside them (`<unit>.d/*.conf`), for the unit they extend. */
export function systemdFiles(): { units: string[]; dropIns: { unit: string; path: string }[] } {
  const units: string[] = [];
  const dropIns: { unit: string; path: string }[] = [];
  for (const entry of readdirSync(systemdDir, { withFileTypes: true })) {
    if (entry.isDirectory() && entry.name.endsWith(".d")) {
      const unit = entry.name.slice(0, -2);
      for (const file of readdirSync(join(systemdDir, entry.name))) {
        if (file.endsWith(".conf")) dropIns.push({ unit, path: join(systemdDir, entry.name, file) });
      }
    } else if (entry.isFile() && /\.(service|socket|timer|path|mount|target)$/.test(entry.name)) {
      units.push(join(systemdDir, entry.name));
    }
  }
  return { units: units.sort(), dropIns: dropIns.sort((a, b) => a.path.localeCompare(b.path)) };
}

/**
 * `systemd-analyze verify` of a unit by name, with `dirs` searched before the host's own unit
 * directories (the trailing colon of SYSTEMD_UNIT_PATH keeps those): a unit there and its
 * `<unit>.d/*.conf` drop-ins are loaded as systemd would load them once installed.
 */
export function verifyUnit(name: string, dirs: readonly string[]): RunResult {
  return run("systemd-analyze", ["verify", name], repoRoot, { SYSTEMD_UNIT_PATH: `${dirs.join(":")}:` });
}

/** Whether systemd finds a unit of this name among the host's units (e.g. podman.socket from the podman package). */
export function hostHasUnit(name: string): boolean {
  const dirs = run("systemd-analyze", ["unit-paths"]).stdout.split("\n").filter(Boolean);
  return dirs.some((dir) => existsSync(join(dir, name)));
}

/** A unit file as section → key → values (a key may repeat), plus the commented-out keys. */
export interface UnitFile {
  sections: Map<string, Map<string, string[]>>;
  commented: Map<string, string[]>;
}

export function parseUnit(text: string): UnitFile {
  const sections = new Map<string, Map<string, string[]>>();
  const commented = new Map<string, string[]>();
  let current: Map<string, string[]> | undefined;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      current = new Map();
      sections.set(header[1]!, current);
      continue;
    }
    const commentedSetting = /^#([A-Z][A-Za-z]+)=(.*)$/.exec(line);
    if (commentedSetting) {
      const values = commented.get(commentedSetting[1]!) ?? [];
      values.push(commentedSetting[2]!);
      commented.set(commentedSetting[1]!, values);
      continue;
    }
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const setting = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (!setting || !current) throw new Error(`unparsable unit line: ${raw}`);
    const values = current.get(setting[1]!) ?? [];
    values.push(setting[2]!);
    current.set(setting[1]!, values);
  }
  return { sections, commented };
}

/** `Environment=` values of a section as a name → value map. */
export function environmentOf(values: readonly string[]): Map<string, string> {
  const env = new Map<string, string>();
  for (const value of values) {
    const unquoted = value.startsWith('"') ? (JSON.parse(value) as string) : value;
    const eq = unquoted.indexOf("=");
    env.set(unquoted.slice(0, eq), unquoted.slice(eq + 1));
  }
  return env;
}

/** Defaults of the deploy units that differ from `npm start`'s on purpose (DESIGN §10 lists the latter). */
export const serverDefaults: Readonly<Record<string, string>> = {
  HYPERVISOR_STATE_DIR: "a service keeps its state in /var/lib (systemd StateDirectory=), not ./var",
  HYPERVISOR_SANDBOX_DATA_DIR: "sandbox data sits beside the state in /var/lib, not in ./sandboxes",
  HYPERVISOR_RUNTIME: "a server isolates sandboxes in Podman containers; `process` is for development",
  HYPERVISOR_TRUSTED_PROXIES: "a server listens on loopback behind a TLS front on the same host, whose X-Forwarded-For names the client",
};

/**
 * Keys the units' hosts (Debian 13, systemd 257) know and an older systemd-analyze here may not,
 * with the version that brought each: only their "unknown key" lines are forgiven, on an older host.
 */
const NEWER_KEYS: Record<string, number> = { DelegateSubgroup: 254 };

export function withoutNewerKeys(output: string): string {
  const version = Number(/systemd (\d+)/.exec(run("systemd-analyze", ["--version"]).stdout)?.[1]);
  return output
    .split("\n")
    .filter((line) => !Object.entries(NEWER_KEYS).some(([key, since]) => version < since && line.includes(`Unknown key '${key}'`)))
    .join("\n");
}

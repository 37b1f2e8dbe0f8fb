import { execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, copyFile, cp, mkdir, mkdtemp, readdir, readFile, realpath, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve as resolvePath } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs, promisify } from "node:util";

export interface BuildSandboxImageOptions {
  tag: string;
  version?: string;
  failHealth?: boolean;
  labels?: Record<string, string>;
}

export const DEFAULT_SANDBOX_TAG = "localhost/hypervisor-sandbox:latest";

/** dist/sandbox/, where this file is compiled to; the repo root is two levels up. */
const compiledSandboxDir = fileURLToPath(new URL(".", import.meta.url));
const repoRoot = fileURLToPath(new URL("../../", import.meta.url));

/**
 * Builds the reference sandbox image without any registry (DESIGN.md §9): `FROM scratch` plus a
 * root filesystem holding the host's node binary, the shared libraries it links, and the
 * compiled sandbox. Returns the image ID.
 */
export async function buildSandboxImage(options: BuildSandboxImageOptions): Promise<string> {
  const version = options.version ?? "1";
  if (!/^[\x21-\x7e]+$/.test(version)) throw new Error(`version must be printable ASCII without spaces, got ${JSON.stringify(version)}`);
  const labels = { ...options.labels, "io.hypervisor.sandbox.version": version };
  for (const key of Object.keys(labels)) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._\-/]*$/.test(key)) throw new Error(`invalid label key ${JSON.stringify(key)}`);
  }

  const context = await mkdtemp(join(tmpdir(), "hv-sandbox-image-"));
  try {
    const rootfs = join(context, "rootfs");
    await copyNodeRuntime(rootfs);
    await copyApp(join(rootfs, "app"));
    await mkdir(join(rootfs, "data"), { recursive: true });
    await mkdir(join(rootfs, "tmp"), { recursive: true });
    await chmod(join(rootfs, "tmp"), 0o1777);

    const command = ["/usr/bin/node", "/app/sandbox/server.js", `--version=${version}`];
    if (options.failHealth) command.push("--fail-health");
    await writeFile(
      join(context, "Containerfile"),
      ["FROM scratch", "COPY rootfs/ /", "ENV PORT=8080", "EXPOSE 8080", "STOPSIGNAL SIGTERM", "WORKDIR /app", `CMD ${JSON.stringify(command)}`, ""].join("\n"),
    );

    // Labels go on the command line, which spares us quoting them inside the Containerfile.
    const labelArgs = Object.entries(labels).flatMap(([key, value]) => ["--label", `${key}=${value}`]);
    const output = await podman(["build", "-q", "--pull=never", ...labelArgs, "-t", options.tag, context]);
    const imageId = output.trim().split("\n").pop() ?? "";
    if (!/^[0-9a-f]{12,64}$/.test(imageId)) throw new Error(`podman build printed no image ID: ${JSON.stringify(output)}`);
    return imageId;
  } finally {
    await rm(context, { recursive: true, force: true });
  }
}

/** The node binary at /usr/bin/node, and each library `ldd` names at the path it names, as real files. */
async function copyNodeRuntime(rootfs: string): Promise<void> {
  const node = await realpath(process.execPath);
  await copyInto(rootfs, node, "/usr/bin/node");
  const { stdout } = await promisify(execFile)("ldd", [node]);
  const libraries = parseLdd(stdout);
  for (const library of libraries) await copyInto(rootfs, await realpath(library), library);
  // Debian's node loads some builtins from files ("externalized builtins", e.g.
  // /usr/share/nodejs/cjs-module-lexer/lexer.js), whose paths are compiled into libnode; without
  // them node aborts at start ("Cannot load externalized builtin").
  for (const file of [node, ...libraries]) {
    for (const path of new Set((await readFile(await realpath(file), "latin1")).match(/\/usr\/share\/nodejs\/[\w@./-]+\.m?js/g) ?? [])) {
      if (existsSync(path)) await copyInto(rootfs, await realpath(path), path);
    }
  }
}

/**
 * `ldd` lines look like `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, or
 * `/lib64/ld-linux-x86-64.so.2 (0x...)` for the loader, or `linux-vdso.so.1 (0x...)` for the
 * kernel-provided vDSO, which has no file.
 */
function parseLdd(output: string): string[] {
  const paths: string[] = [];
  for (const line of output.split("\n")) {
    if (line.includes("not found")) throw new Error(`ldd cannot resolve a library of node: ${line.trim()}`);
    const path = /(?:=>\s*)?(\/\S+)\s+\(0x[0-9a-f]+\)/.exec(line)?.[1];
    if (path) paths.push(path);
  }
  if (paths.length === 0) throw new Error(`ldd listed no libraries:\n${output}`);
  return paths;
}

async function copyInto(rootfs: string, source: string, target: string): Promise<void> {
  const destination = join(rootfs, target);
  await mkdir(dirname(destination), { recursive: true });
  await copyFile(source, destination);
}

/**
 * /app mirrors the repo layout (sandbox/*.js beside node_modules/ and a package.json), so the
 * compiled relative imports and the bare `ws` import resolve exactly as they do from dist/.
 */
async function copyApp(app: string): Promise<void> {
  const files = (await readdir(compiledSandboxDir)).filter((name) => name.endsWith(".js") && !name.startsWith("build-image") && !name.endsWith(".test.js"));
  if (!files.includes("server.js")) {
    throw new Error(`no compiled server in ${compiledSandboxDir}; run \`npm run build\` first`);
  }
  await mkdir(join(app, "sandbox"), { recursive: true });
  for (const name of files) await copyFile(join(compiledSandboxDir, name), join(app, "sandbox", name));
  await writeFile(join(app, "package.json"), `${JSON.stringify({ type: "module", private: true })}\n`);
  await cp(join(repoRoot, "node_modules", "ws"), join(app, "node_modules", "ws"), { recursive: true, dereference: true });
}

/** Runs podman with our environment, so CONTAINERS_CONF and friends reach it. */
function podman(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn("podman", args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    child.on("error", (error) => reject(new Error(`cannot run podman: ${error.message}`)));
    child.on("close", (code) => {
      if (code === 0) resolve(stdout);
      else reject(new Error(`podman ${args[0]} exited with ${code}:\n${stderr.trim()}`));
    });
  });
}

async function cli(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      tag: { type: "string", default: DEFAULT_SANDBOX_TAG },
      version: { type: "string" },
      "fail-health": { type: "boolean", default: false },
      label: { type: "string", multiple: true, default: [] },
    },
    strict: true,
  });
  const labels: Record<string, string> = {};
  for (const pair of values.label ?? []) {
    const equals = pair.indexOf("=");
    if (equals <= 0) throw new Error(`--label expects key=value, got ${JSON.stringify(pair)}`);
    labels[pair.slice(0, equals)] = pair.slice(equals + 1);
  }
  const imageId = await buildSandboxImage({
    tag: values.tag ?? DEFAULT_SANDBOX_TAG,
    version: values.version,
    failHealth: values["fail-health"],
    labels,
  });
  process.stdout.write(`${imageId}\n`);
}

if (process.argv[1] !== undefined && resolvePath(process.argv[1]) === fileURLToPath(import.meta.url)) {
  cli(process.argv.slice(2)).catch((error: Error) => {
    process.stderr.write(`build-image: ${error.message}\n`);
    process.exit(1);
  });
}

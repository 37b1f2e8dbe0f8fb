// deploy/RUNBOOK.md against the repository: every unit, drop-in and configuration file it installs
// is a file here, every such file is installed by it, and each one verifies with the tool that
// will read it on the node (systemd, nginx, Podman, systemd-tmpfiles, sh).
import { describe, it, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { debianUnitPath, environmentOf, hostHasUnit, parseUnit, repoRoot, requireTool, run, systemdDir, verifyUnit, withoutNewerKeys } from "./host-tools.js";

const runbook = readFileSync(join(repoRoot, "deploy/RUNBOOK.md"), "utf8");
/** The folders whose files end up on a node. */
const installedFolders = ["deploy/systemd", "deploy/tmpfiles", "deploy/containers", "deploy/nginx", "deploy/bin"];

/** Repository paths the runbook installs from the release: `/opt/hypervisor/deploy/...` in its commands. */
const installed = [...new Set([...runbook.matchAll(/\/opt\/hypervisor\/(deploy\/[\w./-]*\w)/g)].map((m) => m[1]!))].sort();
/** Repository paths the runbook names as such, e.g. in its table of installed files. */
const named = [...new Set([...runbook.matchAll(/`(deploy\/[\w./-]*\w)`/g)].map((m) => m[1]!))].sort();

function filesBelow(folder: string): string[] {
  const dir = join(repoRoot, folder);
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? filesBelow(join(folder, e.name)) : [join(folder, e.name)]));
}

function skipOrFail(t: TestContext, message: string): void {
  if (process.env.CI === "true") assert.fail(`${message}; CI must run this check`);
  t.skip(message);
}

describe("runbook (deploy/RUNBOOK.md)", () => {
  it("installs only files of the repository, and names only files that exist", () => {
    assert.ok(installed.length >= 8, `found ${installed.length} installed paths`);
    for (const path of [...installed, ...named]) assert.ok(existsSync(join(repoRoot, path)), `${path} is in the repository`);
  });

  it("installs every unit, drop-in and configuration file the repository versions for a node", () => {
    const inFolders = installedFolders.flatMap(filesBelow);
    for (const file of inFolders) assert.ok(installed.includes(file), `RUNBOOK.md installs ${file}`);
  });

  for (const path of installed.filter((p) => p.startsWith("deploy/systemd/"))) {
    it(`${path} passes systemd-analyze verify as installed`, (t) => {
      if (!requireTool(t, "systemd-analyze", "apt-get install systemd")) return;
      // A drop-in is verified on the unit it extends, with the repository's units and drop-ins first.
      const unit = dirname(path).endsWith(".d") ? basename(dirname(path)).slice(0, -2) : basename(path);
      if (!existsSync(join(systemdDir, unit)) && !hostHasUnit(unit)) return skipOrFail(t, `${unit} is not installed (apt-get install podman)`);
      const result = verifyUnit(unit, [systemdDir]);
      assert.equal(withoutNewerKeys(`${result.stdout}${result.stderr}`).trim(), "", "verify printed nothing");
      assert.equal(result.status, 0);
    });
  }

  for (const path of installed.filter((p) => p.startsWith("deploy/containers/"))) {
    it(`${path} is read by Podman without an error`, (t) => {
      if (!requireTool(t, "podman", "apt-get install podman")) return;
      // CONTAINERS_CONF makes Podman read this file alone; a bad key or value fails every command.
      const result = run("podman", ["version", "--format", "{{.Client.Version}}"], repoRoot, { CONTAINERS_CONF: join(repoRoot, path) });
      assert.equal(result.status, 0, result.stderr);
      assert.equal(result.stderr.trim(), "", "no warning");
    });
  }

  for (const path of installed.filter((p) => p.startsWith("deploy/tmpfiles/"))) {
    it(`${path} opens /run/podman to the hypervisor's group, traverse only`, (t) => {
      if (!requireTool(t, "systemd-tmpfiles", "apt-get install systemd")) return;
      // A root of its own, with Debian's /run/podman as podman.conf makes it (0700 root) and the group of stage 2.
      const root = mkdtempSync(join(tmpdir(), "hypervisor-tmpfiles-"));
      t.after(() => rmSync(root, { recursive: true, force: true }));
      mkdirSync(join(root, "etc"));
      writeFileSync(join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nhypervisor:x:990:990::/var/lib/hypervisor:/usr/sbin/nologin\n");
      writeFileSync(join(root, "etc/group"), "root:x:0:\nhypervisor:x:990:\n");
      mkdirSync(join(root, "run/podman"), { recursive: true, mode: 0o700 });
      const result = run("systemd-tmpfiles", [`--root=${root}`, "--create", join(repoRoot, path)]);
      assert.equal(result.status, 0, result.stderr);
      const stat = statSync(join(root, "run/podman"));
      assert.equal((stat.mode & 0o777).toString(8), "710");
      assert.equal(stat.gid, 990);
    });
  }

  for (const path of installed.filter((p) => p.startsWith("deploy/bin/"))) {
    it(`${path} is an executable shell script that parses`, () => {
      assert.ok(statSync(join(repoRoot, path)).mode & 0o111, "executable");
      const result = run("sh", ["-n", join(repoRoot, path)]);
      assert.equal(result.status, 0, result.stderr);
    });
  }

  for (const path of installed.filter((p) => p.startsWith("deploy/nginx/"))) {
    describe(`${path} (the TLS front)`, () => {
      const site = readFileSync(join(repoRoot, path), "utf8");
      // The directives alone: a comment may name what the config must not do.
      const directives = site.replace(/#.*$/gm, "");

      it("passes nginx -t inside an http block, with a generated certificate", (t) => {
        if (!requireTool(t, "nginx", "apt-get install nginx-light")) return;
        if (!requireTool(t, "openssl", "apt-get install openssl")) return;
        const prefix = mkdtempSync(join(tmpdir(), "hypervisor-nginx-"));
        t.after(() => rmSync(prefix, { recursive: true, force: true }));
        const key = join(prefix, "key.pem");
        const cert = join(prefix, "cert.pem");
        const openssl = run("openssl", [
          "req",
          "-x509",
          "-newkey",
          "rsa:2048",
          "-nodes",
          "-days",
          "1",
          "-subj",
          "/CN=sandbox.example.org",
          "-keyout",
          key,
          "-out",
          cert,
        ]);
        assert.equal(openssl.status, 0, openssl.stderr);
        // The file as installed, only its certificate paths pointed at the generated pair.
        const certificates = [...site.matchAll(/^\s*(ssl_certificate(?:_key)?)\s+\S+;/gm)];
        assert.equal(certificates.length, 2, "one certificate and its key");
        const tested = site.replace(/^(\s*ssl_certificate)\s+\S+;/m, `$1 ${cert};`).replace(/^(\s*ssl_certificate_key)\s+\S+;/m, `$1 ${key};`);
        writeFileSync(join(prefix, "site.conf"), tested);
        // Debian's nginx.conf reads sites-enabled inside its http block; this is that, with every
        // path nginx writes inside the prefix.
        const temp = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].map((name) => `    ${name}_temp_path ${join(prefix, name)};`);
        writeFileSync(
          join(prefix, "nginx.conf"),
          [
            `pid ${join(prefix, "nginx.pid")};`,
            "error_log stderr;",
            "events {}",
            "http {",
            "    access_log off;",
            ...temp,
            `    include ${join(prefix, "site.conf")};`,
            "}",
            "",
          ].join("\n"),
        );
        const result = run("nginx", ["-t", "-p", prefix, "-c", join(prefix, "nginx.conf")]);
        assert.equal(result.status, 0, result.stderr);
        assert.doesNotMatch(result.stderr, /\[(warn|emerg|alert)\]/, "no warning");
      });

      it("overwrites X-Forwarded-For with the peer it saw, never appends to the client's", () => {
        assert.match(directives, /^\s*proxy_set_header X-Forwarded-For \$remote_addr;/m);
        assert.doesNotMatch(directives, /\$proxy_add_x_forwarded_for/);
      });

      it("keeps WebSockets open longer than a sandbox's idle stop", () => {
        const env = environmentOf(parseUnit(readFileSync(debianUnitPath, "utf8")).sections.get("Service")?.get("Environment") ?? []);
        const idleStopMs = Number(env.get("HYPERVISOR_IDLE_STOP_MS"));
        assert.ok(idleStopMs > 0);
        assert.match(directives, /proxy_set_header Upgrade \$http_upgrade;/);
        for (const directive of ["proxy_read_timeout", "proxy_send_timeout"]) {
          const seconds = Number(new RegExp(`^\\s*${directive} (\\d+)s;`, "m").exec(directives)?.[1]);
          assert.ok(seconds * 1000 > idleStopMs, `${directive} ${seconds}s > HYPERVISOR_IDLE_STOP_MS ${idleStopMs} ms`);
        }
      });

      it("serves the public origin and the sandboxes' wildcard domain over TLS", () => {
        const names = [...directives.matchAll(/^\s*server_name ([^;]+);/gm)].map((m) => m[1]!.split(/\s+/));
        assert.ok(names.length >= 2, "an http and an https server");
        for (const list of names)
          assert.ok(
            list.some((n) => n.startsWith("*.")),
            `a wildcard name among ${list.join(" ")}`,
          );
        assert.match(directives, /^\s*listen 443 ssl;/m);
        assert.match(directives, /^\s*proxy_pass http:\/\/hypervisor;/m);
        assert.match(directives, /server 127\.0\.0\.1:8080;/, "the hypervisor's loopback listener");
      });
    });
  }

  it("names the repository paths relative to the release directory", () => {
    // A path under the release that is not in deploy/ would be a build output or a typo.
    for (const m of runbook.matchAll(/\/opt\/hypervisor\/([\w./-]*\w)/g)) {
      const path = m[1]!;
      assert.ok(path.startsWith("deploy/") || path.startsWith("dist/"), `${path}: /opt/hypervisor holds the checkout and its build`);
    }
  });
});

# The hypervisor daemon and hypervisorctl, built from package-lock.json (no network at build
# time: each locked tarball is a fixed-output derivation pinned by its integrity hash).
{
  lib,
  buildNpmPackage,
  importNpmLock,
  nodejs_20,
  python3,
  makeWrapper,
}:

let
  root = ../..;
  manifest = lib.importJSON (root + "/package.json");
in
buildNpmPackage {
  pname = manifest.name;
  inherit (manifest) version;
  nodejs = nodejs_20;

  # Only what the build reads: editing tests, docs or deploy files does not rebuild the daemon.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (root + "/package.json")
      (root + "/package-lock.json")
      (root + "/tsconfig.json")
      (root + "/tsconfig.browser.json")
      (root + "/hypervisor")
      (root + "/proxy")
      (root + "/sandbox")
    ];
  };

  # importNpmLock fetches every tarball of package-lock.json by its own integrity hash, so there
  # is no npmDepsHash to keep in step with the lockfile. npm-lock.nix supplies the tarball URLs
  # the lockfile leaves out.
  npmDeps = importNpmLock {
    package = manifest;
    packageLock = import ./npm-lock.nix (lib.importJSON (root + "/package-lock.json"));
  };
  npmConfigHook = importNpmLock.npmConfigHook;

  # better-sqlite3 is a native addon: its install script compiles SQLite with node-gyp, which
  # needs python3 (nodejs headers come from buildNpmPackage's npm_config_nodedir).
  nativeBuildInputs = [
    python3
    makeWrapper
  ];
  # Skip prebuild-install's download attempt (there is no network in the sandbox) and go
  # straight to node-gyp.
  env.npm_config_build_from_source = "true";
  # Dependencies are installed with --ignore-scripts; only better-sqlite3 is rebuilt, which is
  # what package.json "allowScripts" permits (cpu-features, ssh2, protobufjs stay off).
  npmRebuildFlags = [ "better-sqlite3" ];

  # `npm run build` is tsc (the server, then the pages' browser scripts); the default npmBuildScript.

  # npm pack would drop dist/ (it honours .gitignore), so install by hand: the compiled code
  # without tests, the production dependencies, and package.json (the version is read at run time).
  # The package.json copied here is importNpmLock's, with store paths for dependencies; its
  # post-install hook (postInstall below) puts the repository's own back in its place.
  installPhase = ''
    runHook preInstall

    npm prune --omit=dev --no-save
    pkg=$out/lib/node_modules/${manifest.name}
    mkdir -p $pkg/dist
    cp -r dist/hypervisor dist/proxy dist/sandbox $pkg/dist/
    find $pkg/dist -name '*.test.js' -o -name '*.test.js.map' | xargs -r rm
    cp -r node_modules package.json $pkg/

    makeWrapper ${nodejs_20}/bin/node $out/bin/hypervisor \
      --add-flags $pkg/dist/hypervisor/main.js
    makeWrapper ${nodejs_20}/bin/node $out/bin/hypervisorctl \
      --add-flags $pkg/dist/hypervisor/hypervisorctl/hypervisorctl.js

    runHook postInstall
  '';

  meta = {
    inherit (manifest) description;
    longDescription = ''
      A daemon that gives each user a live and a dev sandbox (Podman containers) behind
      passkey sign-in, swaps them atomically and rolls back within a deadline; hypervisorctl
      drives its operator API.
    '';
    license = lib.licenses.mit;
    mainProgram = "hypervisor";
    # Linux only: Podman, systemd units and cgroup limits. x86_64 and aarch64 (Raspberry Pi 5)
    # are the systems the flake builds.
    platforms = lib.platforms.linux;
  };
}

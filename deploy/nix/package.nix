# The hypervisor daemon and hypervisorctl, built from package-lock.json (no network at build
# time: buildNpmPackage fetches the locked dependencies as a fixed-output derivation first).
{
  lib,
  buildNpmPackage,
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

  # Hash of the dependencies locked in package-lock.json. After any change to the lockfile:
  # build once with lib.fakeHash, copy the "got: sha256-..." from the error here (or run
  # `prefetch-npm-deps package-lock.json`). Not computable on the machines without Nix.
  npmDepsHash = lib.fakeHash;

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
    description = "Per-user live/dev sandboxes behind passkeys, with atomic swap and bounded rollback";
    license = lib.licenses.mit;
    mainProgram = "hypervisor";
    platforms = lib.platforms.linux;
  };
}

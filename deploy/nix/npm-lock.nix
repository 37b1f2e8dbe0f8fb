# package-lock.json as importNpmLock needs it: every package with its tarball URL.
#
# The lockfile is written with npm's omit-lockfile-registry-resolved, so registry packages carry
# their integrity hash but no `resolved` URL; npm then fetches from the configured registry, and
# this does the same with the public registry's fixed tarball layout
# (<registry>/<name>/-/<unscoped name>-<version>.tgz). The integrity hash still pins each
# tarball, so nothing unlocked can enter the build.
#
# Builtins only, so test/deploy/nix.test.ts can evaluate it without nixpkgs.
lock:
let
  registry = "https://registry.npmjs.org";
  # "node_modules/a/node_modules/@s/b" -> "@s/b": the part after the last node_modules/.
  nameAt =
    path:
    let
      parts = builtins.split "node_modules/" path;
    in
    builtins.elemAt parts (builtins.length parts - 1);
  withResolved =
    path: module:
    let
      # An npm alias ("x": "npm:y@1") records the real name.
      name = module.name or (nameAt path);
    in
    if path == "" || module ? resolved || module ? link || module.inBundle or false then
      module
    else
      module // { resolved = "${registry}/${name}/-/${baseNameOf name}-${module.version}.tgz"; };
in
lock // { packages = builtins.mapAttrs withResolved lock.packages; }

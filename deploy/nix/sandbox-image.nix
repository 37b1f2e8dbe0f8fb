# The reference sandbox as an OCI image, the Nix twin of sandbox/build-image.ts (which builds
# the same layout with podman on hosts without Nix). Load it with `podman load < result`;
# the hypervisor never pulls (docs/operating.md, "Releases").
{
  lib,
  dockerTools,
  runCommand,
  nodejs-slim_20,
  hypervisor,
}:

let
  inherit (hypervisor) version;
  fromPackage = "${hypervisor}/lib/node_modules/${hypervisor.pname}";
  # Same layout as build-image.ts's /app: sandbox/*.js beside node_modules/ws and a package.json
  # whose "type": "module" makes node load the .js files as ES modules.
  app = runCommand "hypervisor-sandbox-app-${version}" { } ''
    app=$out/lib/hypervisor-sandbox
    mkdir -p $app/dist/sandbox $app/node_modules
    for f in ${fromPackage}/dist/sandbox/*.js; do
      case "$(basename $f)" in
        build-image*|*.test.js) ;;
        *) cp $f $app/dist/sandbox/ ;;
      esac
    done
    test -f $app/dist/sandbox/server.js
    cp -r ${fromPackage}/node_modules/ws $app/node_modules/
    echo '{"type":"module","private":true}' > $app/package.json
  '';
in
dockerTools.buildLayeredImage {
  name = "localhost/hypervisor-sandbox";
  tag = "latest";
  # node without npm: the sandbox runs, it installs nothing.
  contents = [
    nodejs-slim_20
    app
  ];
  # /data is the mount point of the data volume; /tmp is a tmpfs in production (podman
  # runtime) but must exist for `podman run` by hand.
  extraCommands = ''
    mkdir -p data tmp
    chmod 1777 tmp
  '';
  config = {
    # No User=: like build-image.ts the sandbox runs as the image's root, which the podman
    # runtime strips of every capability (CapDrop ALL, no-new-privileges, read-only root).
    # A non-root user would need the data volume chowned to it, which volumes created
    # through the API do not get.
    Cmd = [
      "${nodejs-slim_20}/bin/node"
      "${app}/lib/hypervisor-sandbox/dist/sandbox/server.js"
      "--version=${version}"
    ];
    WorkingDir = "${app}/lib/hypervisor-sandbox";
    Env = [ "PORT=8080" ];
    ExposedPorts = {
      "8080/tcp" = { };
    };
    StopSignal = "SIGTERM";
    Labels = {
      # Read by the podman runtime as the generation's version.
      "io.hypervisor.sandbox.version" = version;
      "org.opencontainers.image.title" = "hypervisor-sandbox";
      "org.opencontainers.image.version" = version;
    };
  };
}

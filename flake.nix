{
  description = "hypervisor: per-user live/dev sandboxes behind passkeys, with atomic swap and bounded rollback";

  # The current stable release; 24.11 and 25.05 are end of life.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  # Written for a networked Nix host. On the development machines (Debian, nix-bin 2.8, no
  # nixpkgs, no network) only parsing and the module's offline evaluation are checked:
  # test/deploy/nix.test.ts. flake.lock is not committed because it cannot be produced there;
  # the first `nix flake lock` on a Nix host writes it, and it is committed from then on
  # (README "Nix").
  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems =
        f:
        lib.genAttrs systems (
          system:
          f (
            import nixpkgs {
              inherit system;
              overlays = [ self.overlays.default ];
            }
          )
        );
    in
    {
      overlays.default = final: _prev: {
        hypervisor = final.callPackage ./deploy/nix/package.nix { };
        hypervisor-sandbox-image = final.callPackage ./deploy/nix/sandbox-image.nix { };
      };

      packages = forAllSystems (pkgs: {
        default = pkgs.hypervisor;
        hypervisor = pkgs.hypervisor;
        sandbox-image = pkgs.hypervisor-sandbox-image;
      });

      # `nix run .#hypervisorctl -- status` (or `nix run` for the daemon itself).
      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${pkgs.hypervisor}/bin/hypervisor";
          meta.description = "the hypervisor daemon";
        };
        hypervisorctl = {
          type = "app";
          program = "${pkgs.hypervisor}/bin/hypervisorctl";
          meta.description = "the hypervisor's operator CLI (HYPERVISOR_OPERATOR_SOCKET or --socket)";
        };
      });

      # The module plus this flake's build of the daemon as the default package. The overlay is
      # applied to the host's own pkgs rather than to nixpkgs.overlays, so importing the module
      # changes nothing else on the host.
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./deploy/nixos/module.nix ];
          services.hypervisor.package = lib.mkDefault (self.overlays.default pkgs pkgs).hypervisor;
        };

      # The host examples as whole systems, so `nix flake check` evaluates the module under the
      # real NixOS module system: a server (x86_64) and a Raspberry Pi 5 (aarch64).
      nixosConfigurations = {
        example = lib.nixosSystem {
          specialArgs.hypervisor = self;
          modules = [
            { nixpkgs.hostPlatform = "x86_64-linux"; }
            ./deploy/hosts/example.nix
          ];
        };
        pi5 = lib.nixosSystem {
          specialArgs.hypervisor = self;
          modules = [ ./deploy/hosts/pi5.nix ];
        };
      };

      checks = forAllSystems (
        pkgs:
        {
          package = pkgs.hypervisor;
          sandbox-image = pkgs.hypervisor-sandbox-image;
          # Boots a VM with the module and the Podman runtime (deploy/nix/vm-test.nix): start,
          # a sandbox, a reboot, a generation rollback, a restart without failed requests.
          vm = pkgs.testers.runNixOSTest (
            import ./deploy/nix/vm-test.nix {
              inherit self;
              sandboxImage = pkgs.hypervisor-sandbox-image;
            }
          );
        }
        # Each host example builds on its own system.
        // lib.mapAttrs' (name: host: lib.nameValuePair "host-${name}" host.config.system.build.toplevel) (
          lib.filterAttrs (
            _: host: host.pkgs.stdenv.hostPlatform.system == pkgs.stdenv.hostPlatform.system
          ) self.nixosConfigurations
        )
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            nodejs_20
            python3 # node-gyp for better-sqlite3
            podman
            nginx # benchmark baseline
            wrk
            chromium # browser tests (playwright-core with executablePath)
            nix
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}

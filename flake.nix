{
  description = "hypervisor: per-user live/dev sandboxes behind passkeys, with atomic swap and bounded rollback";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  # Written for a networked Nix host. On the development machines (Debian, nix-bin 2.8, no
  # nixpkgs) only parsing and the module's offline evaluation are checked: test/deploy/nix.test.ts.
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

      # The module plus this flake's build of the daemon as the default package. The overlay is
      # applied to the host's own pkgs rather than to nixpkgs.overlays, so importing the module
      # changes nothing else on the host.
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./deploy/nixos/module.nix ];
          services.hypervisor.package = lib.mkDefault (self.overlays.default pkgs pkgs).hypervisor;
        };

      # deploy/hosts/example.nix as a whole system, so `nix flake check` evaluates the module
      # under the real NixOS module system.
      nixosConfigurations.example = lib.nixosSystem {
        system = "x86_64-linux";
        specialArgs.hypervisor = self;
        modules = [ ./deploy/hosts/example.nix ];
      };

      checks = forAllSystems (
        pkgs:
        {
          package = pkgs.hypervisor;
          sandbox-image = pkgs.hypervisor-sandbox-image;
          # Boots a VM with the module and the Podman runtime (deploy/nix/vm-test.nix).
          vm = pkgs.testers.runNixOSTest (
            import ./deploy/nix/vm-test.nix {
              inherit self;
              sandboxImage = pkgs.hypervisor-sandbox-image;
            }
          );
        }
        // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
          example-host = self.nixosConfigurations.example.config.system.build.toplevel;
        }
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

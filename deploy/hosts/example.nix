# An example NixOS host: hypervisor on Podman behind nginx with TLS (Let's Encrypt).
#
# In the host's own flake:
#   inputs.hypervisor.url = "git+https://git.example.org/hypervisor";
#   nixosConfigurations.sandbox = nixpkgs.lib.nixosSystem {
#     system = "x86_64-linux";
#     specialArgs.hypervisor = inputs.hypervisor;
#     modules = [ ./hardware-configuration.nix ./example.nix ];
#   };
# This repository's flake builds it as nixosConfigurations.example (`nix flake check`).
{ hypervisor, ... }:
{
  imports = [ hypervisor.nixosModules.default ];

  services.hypervisor = {
    enable = true;
    publicOrigin = "https://sandbox.example.org";
    runtime = "podman";
    # Operators on other machines reach the API through an SSH tunnel to this loopback port.
    operatorListen = "127.0.0.1:9090";
    # Provisioned out of band by a secrets tool that recreates it at boot (/run is a tmpfs):
    # sops-nix, agenix or colmena keys. A string, never a Nix path, so it stays out of the store.
    operatorTokenFile = "/run/keys/hypervisor-operator-token";
    # Let the first accounts register, then switch to "invite" or "closed" (RUNBOOK stage 3).
    registration = "open";
    sandbox = {
      memory = "1g";
      cpus = "1";
      pids = 512;
      environment.TZ = "UTC";
    };
  };

  # TLS terminates here; the hypervisor listens on loopback (its default, 127.0.0.1:8080).
  services.nginx = {
    enable = true;
    recommendedProxySettings = true;
    recommendedTlsSettings = true;
    virtualHosts."sandbox.example.org" = {
      enableACME = true;
      forceSSL = true;
      locations."/" = {
        proxyPass = "http://127.0.0.1:8080";
        # WebSocket upgrades (/ws in the sandboxes) pass through (RFC 6455 §4.1).
        proxyWebsockets = true;
        # The recommended headers append to the client's own X-Forwarded-For; the hypervisor
        # trusts this proxy (services.hypervisor.trustedProxies), so it sends only what it saw.
        recommendedProxySettings = false;
        extraConfig = ''
          proxy_set_header Host $host;
          proxy_set_header X-Forwarded-For $remote_addr;
          proxy_set_header X-Forwarded-Proto $scheme;
          proxy_set_header X-Forwarded-Host $host;
        '';
      };
    };
  };
  security.acme = {
    acceptTerms = true;
    defaults.email = "ops@example.org";
  };
  networking.firewall.allowedTCPPorts = [
    80
    443
  ];

  # Podman's state and the images grow: keep an eye on /var (RUNBOOK "disk full").
  virtualisation.podman.autoPrune.enable = false; # pruning could delete an image a rollback needs

  # Placeholders so the example evaluates as a whole system; a real host has its own.
  boot.loader.grub.device = "nodev";
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  system.stateVersion = "24.11";
}

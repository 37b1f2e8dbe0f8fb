# An example NixOS host on a Raspberry Pi 5 (aarch64-linux): hypervisor on Podman, the whole
# stack on one board. The Debian 13 way to run the same board is deploy/RUNBOOK.md.
#
# In the host's own flake:
#   nixosConfigurations.pi = nixpkgs.lib.nixosSystem {
#     specialArgs.hypervisor = inputs.hypervisor;
#     modules = [ ./hardware-configuration.nix ./pi5.nix ];
#   };
# This repository's flake evaluates it as nixosConfigurations.pi5 (`nix flake check` on an
# aarch64-linux builder, or with binfmt emulation).
{ lib, ... }:
{
  imports = [ ./example.nix ];

  nixpkgs.hostPlatform = "aarch64-linux";

  # The Pi 5 boots through its EEPROM firmware into U-Boot (or the UEFI firmware of the
  # pftf/RPi5 project), which reads extlinux.conf: no GRUB. The board support itself (device
  # tree, firmware partition) comes from the host's hardware-configuration.nix, e.g. the
  # nixos-hardware raspberry-pi-5 profile.
  boot.loader.grub.enable = false;
  boot.loader.generic-extlinux-compatible.enable = true;
  # Raspberry Pi kernels have shipped with the memory cgroup disabled unless asked for; without
  # it Podman cannot enforce services.hypervisor.sandbox.memory, and the daemon says so in
  # /_hv/readyz (hypervisor/host-checks.ts). Mainline kernels ignore the parameter.
  boot.kernelParams = [ "cgroup_enable=memory" ];

  services.hypervisor.sandbox = {
    # 8 GB boards: room for a few dozen small sandboxes next to the daemon and nginx.
    memory = lib.mkForce "256m";
    cpus = lib.mkForce "0.5";
  };
  # SD cards wear out: bound what the journal keeps on it.
  services.journald.extraConfig = "SystemMaxUse=200M";

  fileSystems."/" = lib.mkForce {
    device = "/dev/disk/by-label/NIXOS_SD";
    fsType = "ext4";
  };
  fileSystems."/boot/firmware" = {
    device = "/dev/disk/by-label/FIRMWARE";
    fsType = "vfat";
    options = [
      "nofail"
      "noauto"
    ];
  };
}

# NixOS VM test of the module with the Podman runtime: `nix build .#checks.x86_64-linux.vm`.
# This is where the module meets the real NixOS module system, systemd and Podman; none of it
# can run on the development machines.
{ self, sandboxImage }:
{
  name = "hypervisor";

  nodes.machine = {
    imports = [ self.nixosModules.default ];
    virtualisation.memorySize = 2048;
    virtualisation.diskSize = 4096;

    services.hypervisor = {
      enable = true;
      listen = "0.0.0.0:8080";
      openFirewall = true;
      publicOrigin = "http://machine:8080";
      operatorListen = "127.0.0.1:9090";
      operatorTokenFile = "/etc/hypervisor-test/operator-token";
    };
    # Test only: a token in the world-readable store is fine for a throwaway VM, never on a host.
    environment.etc."hypervisor-test/operator-token".text = "vm-test-token-0123456789abcdef";
  };

  testScript = ''
    machine.wait_for_unit("sockets.target")
    # The hypervisor never pulls: images arrive by `podman load`.
    machine.succeed("podman load < ${sandboxImage}")

    machine.wait_for_unit("hypervisor.service")
    machine.wait_for_open_port(8080)
    machine.succeed("curl -fsS http://127.0.0.1:8080/_hv/healthz")

    with subtest("operator API: private socket, token-guarded TCP listener"):
        machine.succeed("test \"$(stat -c %a:%U /var/lib/hypervisor/operator.sock)\" = 600:hypervisor")
        machine.succeed("hypervisorctl status")
        machine.fail("curl -fsS http://127.0.0.1:9090/status")
        machine.succeed("curl -fsS -H 'Authorization: Bearer vm-test-token-0123456789abcdef' http://127.0.0.1:9090/status")

    with subtest("the token reaches the daemon as a credential file only"):
        pid = machine.succeed("systemctl show -p MainPID --value hypervisor.service").strip()
        machine.fail(f"grep -a vm-test-token /proc/{pid}/environ")

    with subtest("the image serves /health as a hardened container"):
        machine.succeed(
            "podman run -d --name probe --read-only --cap-drop=ALL --security-opt no-new-privileges "
            "--tmpfs /tmp -v probe-data:/data -p 127.0.0.1:18080:8080 localhost/hypervisor-sandbox:latest"
        )
        machine.wait_until_succeeds("curl -fsS http://127.0.0.1:18080/health")

    with subtest("restarting the daemon leaves containers running (KillMode=process)"):
        machine.succeed("systemctl restart hypervisor.service")
        machine.wait_for_unit("hypervisor.service")
        machine.succeed("test \"$(podman inspect -f '{{.State.Running}}' probe)\" = true")

    with subtest("hardening holds on the real unit"):
        machine.succeed("systemd-analyze security --threshold=25 hypervisor.service")
  '';
}

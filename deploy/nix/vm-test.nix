# NixOS VM test of the module with the Podman runtime: `nix build .#checks.x86_64-linux.vm`
# (or aarch64-linux). This is where the module meets the real NixOS module system, systemd and
# Podman; none of it can run on the development machines (no nixpkgs, no KVM), so this script
# has been written against the NixOS test driver's API but not yet run.
#
# What it shows, in order: the service starts and is ready; a sandbox starts through the daemon;
# a generation is deployed, swapped in and rolled back; a restart of the daemon fails no
# request; a reboot comes back healthy with the users, routes and data of before.
{ self, sandboxImage }:
{
  name = "hypervisor";

  nodes.machine =
    { pkgs, ... }:
    {
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
      environment.systemPackages = [ pkgs.curl ];
    };

  testScript = ''
    import json

    def ctl(args):
        return json.loads(machine.succeed(f"hypervisorctl --json {args}"))

    def sandbox(user, role):
        rows = ctl(f"sandboxes --user {user}")["sandboxes"]
        return next(s for s in rows if s["role"] == role)

    def healthy(s):
        # The sandbox's own /health on the endpoint the daemon published it on.
        machine.succeed(f"curl -fsS http://{s['endpoint']['host']}:{s['endpoint']['port']}/health")

    machine.wait_for_unit("sockets.target")
    # The hypervisor never pulls: images arrive by `podman load`. The second generation is the
    # same app under another version label, built offline from the first.
    machine.succeed("podman load < ${sandboxImage}")
    machine.succeed(
        "printf 'FROM localhost/hypervisor-sandbox:latest\\nLABEL io.hypervisor.sandbox.version=vm-test-2\\n' "
        "| podman build -t localhost/hypervisor-sandbox:2 -"
    )

    with subtest("the service starts and is ready"):
        machine.wait_for_unit("hypervisor.service")
        machine.wait_for_open_port(8080)
        machine.wait_until_succeeds("curl -fsS http://127.0.0.1:8080/_hv/readyz")
        machine.succeed("hypervisorctl status")

    with subtest("operator API: private socket, token-guarded TCP listener"):
        machine.succeed("test \"$(stat -c %a:%U /var/lib/hypervisor/operator.sock)\" = 600:hypervisor")
        machine.fail("curl -fsS http://127.0.0.1:9090/status")
        machine.succeed("curl -fsS -H 'Authorization: Bearer vm-test-token-0123456789abcdef' http://127.0.0.1:9090/status")

    with subtest("the token reaches the daemon as a credential file only"):
        pid = machine.succeed("systemctl show -p MainPID --value hypervisor.service").strip()
        machine.fail(f"grep -a vm-test-token /proc/{pid}/environ")

    with subtest("a sandbox starts through the daemon"):
        machine.succeed("hypervisorctl users add alice")
        machine.succeed("hypervisorctl sandboxes start alice live")
        live = sandbox("alice", "live")
        assert live["state"] == "running", live
        healthy(live)
        container = f"hv-alice-{live['slot']}"
        machine.succeed(f"test \"$(podman inspect -f '{{{{.State.Running}}}}' {container})\" = true")
        first = live["generation"]

    with subtest("a generation is deployed, swapped in and rolled back"):
        machine.succeed(f"hypervisorctl generations known-good {first}")
        second = ctl("generations add localhost/hypervisor-sandbox:2")["generation"]["id"]
        assert second != first
        assert ctl(f"deploy {second}")["ok"]
        assert ctl("swap")["ok"]
        assert sandbox("alice", "live")["generation"] == second
        rollback = ctl("rollback")
        assert rollback["ok"], rollback
        [result] = rollback["results"]
        assert result["to"]["generation"] == first, result
        live = sandbox("alice", "live")
        assert live["generation"] == first, live
        healthy(live)

    with subtest("a restart of the daemon fails no request"):
        # Requests run throughout the restart; the kernel queues connections on the listening
        # socket systemd holds (socket activation, docs/operating.md), so none is refused, and
        # sandboxes keep running (KillMode=process).
        machine.succeed(
            "systemd-run --unit=hv-load --property=Type=exec sh -c "
            "'for i in $(seq 1 300); do curl -s -o /dev/null -w \"%{http_code}\\n\" "
            "http://127.0.0.1:8080/_hv/healthz; sleep 0.02; done > /tmp/codes'"
        )
        machine.sleep(1)
        machine.succeed("systemctl restart hypervisor.service")
        machine.wait_for_unit("hypervisor.service")
        machine.wait_until_fails("systemctl is-active --quiet hv-load.service")
        codes = machine.succeed("sort /tmp/codes | uniq -c")
        print(codes)
        machine.succeed("test \"$(wc -l < /tmp/codes)\" = 300")
        machine.succeed("test -z \"$(grep -v '^200$' /tmp/codes)\"")
        machine.succeed(f"test \"$(podman inspect -f '{{{{.State.Running}}}}' {container})\" = true")

    with subtest("a reboot comes back healthy"):
        machine.shutdown()
        machine.start()
        machine.wait_for_unit("hypervisor.service")
        machine.wait_until_succeeds("curl -fsS http://127.0.0.1:8080/_hv/readyz")
        # Users, routes and generations are in SQLite; the data volume is in Podman's storage.
        assert sandbox("alice", "live")["generation"] == first
        machine.succeed(f"podman volume exists hv-alice-{live['slot']}-data")
        machine.succeed("hypervisorctl sandboxes start alice live")
        healthy(sandbox("alice", "live"))

    with subtest("hardening holds on the real unit"):
        machine.succeed("systemd-analyze security --threshold=25 hypervisor.service")
  '';
}

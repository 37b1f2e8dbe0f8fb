#!/bin/sh
# The sandbox host's firewall (DESIGN §8a): new connections to this host's own addresses on the
# published sandbox ports are admitted from the hypervisor's address only. Run by
# hypervisor-sandbox-firewall.service (RUNBOOK "Adding a Debian sandbox host"); the NixOS role
# writes the same rules.
#
#   HYPERVISOR_ADDRESS   the hypervisor's address (IPv4 or IPv6), required
#   PUBLISHED_PORTS      the range Podman publishes in, "from:to" (default: the kernel's
#                        ip_local_port_range, where Podman picks a free port)
#
# The rules sit in mangle PREROUTING: before Podman's DNAT, which rewrites these connections to
# the container so that the INPUT chain never sees them, and after connection tracking, so that
# replies to this host's own outgoing connections (local ports in the same range) still pass.
set -eu

chain=hypervisor-sandbox-host
action=${1:-}

stop() {
  for tool in iptables ip6tables; do
    "$tool" -w -t mangle -D PREROUTING -j "$chain" 2>/dev/null || true
    "$tool" -w -t mangle -F "$chain" 2>/dev/null || true
    "$tool" -w -t mangle -X "$chain" 2>/dev/null || true
  done
}

start() {
  : "${HYPERVISOR_ADDRESS:?set HYPERVISOR_ADDRESS to the hypervisor's address}"
  ports=${PUBLISHED_PORTS:-$(tr -s '[:space:]' ':' </proc/sys/net/ipv4/ip_local_port_range | sed 's/:$//')}
  case $ports in
    *[!0-9:]* | :* | *: | *:*:*) echo "PUBLISHED_PORTS must be from:to (got $ports)" >&2; exit 2 ;;
  esac
  case $HYPERVISOR_ADDRESS in
    *:*) admitted=ip6tables ;;
    *.*) admitted=iptables ;;
    *) echo "HYPERVISOR_ADDRESS must be an IPv4 or IPv6 address (got $HYPERVISOR_ADDRESS)" >&2; exit 2 ;;
  esac
  match="-p tcp --dport $ports -m addrtype --dst-type LOCAL -m conntrack --ctstate NEW"
  for tool in iptables ip6tables; do
    "$tool" -w -t mangle -N "$chain" 2>/dev/null || "$tool" -w -t mangle -F "$chain"
    # The hypervisor's own family admits it; the other family admits nobody.
    # shellcheck disable=SC2086 # $match is a list of arguments
    if [ "$tool" = "$admitted" ]; then "$tool" -w -t mangle -A "$chain" $match -s "$HYPERVISOR_ADDRESS" -j RETURN; fi
    # shellcheck disable=SC2086
    "$tool" -w -t mangle -A "$chain" $match -j DROP
    "$tool" -w -t mangle -C PREROUTING -j "$chain" 2>/dev/null || "$tool" -w -t mangle -I PREROUTING -j "$chain"
  done
}

case $action in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

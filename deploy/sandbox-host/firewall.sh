#!/bin/sh
# The sandbox host's firewall (docs/hosts.md). Run by hypervisor-sandbox-firewall.service
# (RUNBOOK "Adding a Debian sandbox host"); the NixOS role writes the same rules.
#
# Ports: new connections to this host's own addresses on the published sandbox ports are admitted
# from the hypervisor's address only.
# Egress: new connections from the sandboxes (Podman's bridges, cni-podman* and podman*) go to the
# hypervisor's egress gateway only (gateway), nowhere (none), or to public addresses only (open);
# never to this host itself, link-local or private ranges. The hypervisor cannot see these rules:
# they alone hold this host's sandboxes to the mode.
#
#   HYPERVISOR_ADDRESS         the hypervisor's address (IPv4 or IPv6), required
#   PUBLISHED_PORTS            the range Podman publishes in, "from:to" (default: the kernel's
#                              ip_local_port_range, where Podman picks a free port)
#   HYPERVISOR_EGRESS          gateway, none or open (default none); the hypervisor's
#                              HYPERVISOR_EGRESS, or none when it has no listener for remote hosts
#   HYPERVISOR_EGRESS_GATEWAY  address:port of the gateway's listener for remote hosts (the
#                              hypervisor's HYPERVISOR_EGRESS_REMOTE_LISTEN), required for gateway
#
# The rules sit in the mangle table: PREROUTING before Podman's DNAT, which rewrites connections to
# published ports to the container so that the INPUT chain never sees them; FORWARD and INPUT
# before the filter table's, where Podman (CNI, netavark) puts its own ACCEPTs first whenever it
# makes a network. Each after connection tracking, so that replies pass.
set -eu

chain=hypervisor-sandbox-host
out=hypervisor-sandbox-out
in=hypervisor-sandbox-in
bridges="cni-podman+ podman+"
action=${1:-}

stop() {
  for tool in iptables ip6tables; do
    "$tool" -w -t mangle -D PREROUTING -j "$chain" 2>/dev/null || true
    for bridge in $bridges; do
      while "$tool" -w -t mangle -D FORWARD -i "$bridge" -j "$out" 2>/dev/null; do :; done
      while "$tool" -w -t mangle -D INPUT -i "$bridge" -j "$in" 2>/dev/null; do :; done
    done
    for c in "$chain" "$out" "$in"; do
      "$tool" -w -t mangle -F "$c" 2>/dev/null || true
      "$tool" -w -t mangle -X "$c" 2>/dev/null || true
    done
  done
}

# Where no sandbox goes, whatever the mode: this host's own loopback, link-local (the cloud's
# metadata service), private and shared ranges, multicast and reserved.
never4="0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 192.0.0.0/24 192.168.0.0/16 198.18.0.0/15 224.0.0.0/4 240.0.0.0/4"
never6="::/128 ::1/128 ::ffff:0:0/96 64:ff9b::/96 fc00::/7 fe80::/10 ff00::/8"

# HYPERVISOR_EGRESS and its gateway, checked before any rule is made.
egress_mode() {
  mode=${HYPERVISOR_EGRESS:-none}
  gateway_family=
  case $mode in
    gateway)
      : "${HYPERVISOR_EGRESS_GATEWAY:?set HYPERVISOR_EGRESS_GATEWAY to the gateway's address:port (the hypervisor's HYPERVISOR_EGRESS_REMOTE_LISTEN)}"
      gateway_port=${HYPERVISOR_EGRESS_GATEWAY##*:}
      gateway_address=${HYPERVISOR_EGRESS_GATEWAY%:*}
      case $gateway_address in
        \[*:*\]) gateway_address=${gateway_address#[}; gateway_address=${gateway_address%]}; gateway_family=ip6tables ;;
        *:* | *[!0-9.]* | '') gateway_family= ;;
        *.*.*.*) gateway_family=iptables ;;
      esac
      case $gateway_port in
        '' | *[!0-9]*) gateway_family= ;;
      esac
      if [ -z "$gateway_family" ]; then
        echo "HYPERVISOR_EGRESS_GATEWAY must be address:port, [v6-address]:port for IPv6 (got $HYPERVISOR_EGRESS_GATEWAY)" >&2
        exit 2
      fi
      ;;
    none | open) ;;
    *) echo "HYPERVISOR_EGRESS must be gateway, none or open (got $mode)" >&2; exit 2 ;;
  esac
}

egress() {
  for tool in iptables ip6tables; do
    if [ "$tool" = iptables ]; then never=$never4; else never=$never6; fi
    for c in "$out" "$in"; do "$tool" -w -t mangle -N "$c" 2>/dev/null || "$tool" -w -t mangle -F "$c"; done
    # Replies: to the hypervisor's connections to published ports, and to what was let out.
    "$tool" -w -t mangle -A "$out" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
    if [ "$tool" = "$gateway_family" ]; then
      "$tool" -w -t mangle -A "$out" -d "$gateway_address" -p tcp --dport "$gateway_port" -j RETURN
    fi
    if [ "$mode" = open ]; then
      for block in $never; do "$tool" -w -t mangle -A "$out" -d "$block" -j DROP; done
      "$tool" -w -t mangle -A "$out" -j RETURN
    else
      "$tool" -w -t mangle -A "$out" -j DROP
    fi
    # This host itself: replies only (no DNS, no listener of the host's; the sandboxes' resolver
    # is the gateway, or in open mode a public one). IPv6 needs neighbour discovery to be routed at all.
    "$tool" -w -t mangle -A "$in" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
    if [ "$tool" = ip6tables ]; then
      for type in neighbour-solicitation neighbour-advertisement; do
        "$tool" -w -t mangle -A "$in" -p ipv6-icmp --icmpv6-type "$type" -j RETURN
      done
    fi
    "$tool" -w -t mangle -A "$in" -j DROP
    for bridge in $bridges; do
      "$tool" -w -t mangle -C FORWARD -i "$bridge" -j "$out" 2>/dev/null || "$tool" -w -t mangle -I FORWARD -i "$bridge" -j "$out"
      "$tool" -w -t mangle -C INPUT -i "$bridge" -j "$in" 2>/dev/null || "$tool" -w -t mangle -I INPUT -i "$bridge" -j "$in"
    done
  done
}

start() {
  : "${HYPERVISOR_ADDRESS:?set HYPERVISOR_ADDRESS to the hypervisor's address}"
  egress_mode
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
  egress
}

case $action in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

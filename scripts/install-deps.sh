#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine (as root): Podman with runc
# (crun fails on these cgroup v1 hosts), bubblewrap and iptables to contain process sandboxes,
# Debian's chromium for browser tests, nginx, haproxy, caddy and wrk for the benchmarks (the
# proxy bench's peers), nix-bin to parse and evaluate the flake, openssh-server for the ssh://
# host tests, debootstrap and systemd-container (systemd-nspawn) for the runbook rehearsal's
# Debian 13 box, then npm packages from the lockfile.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(podman runc slirp4netns uidmap bubblewrap iptables chromium nginx-light haproxy caddy wrk nix-bin systemd curl openssh-server debootstrap systemd-container)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

npm ci --no-audit --no-fund

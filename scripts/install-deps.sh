#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine (as root): Podman with runc
# (crun fails on these cgroup v1 hosts), bubblewrap and iptables to contain process sandboxes,
# Debian's chromium for browser tests, nginx, haproxy, caddy and wrk for the benchmarks (the
# proxy bench's peers), nix-bin to parse and evaluate the flake, openssh-server for the ssh://
# host tests, iproute2 for network namespaces (process sandboxes, simulated hosts), openssl for
# test certificates, debootstrap and systemd-container (systemd-nspawn) for the runbook
# rehearsal's Debian 13 box (npm run rehearsal), btrfs-progs and xfsprogs for the loop file
# systems the snapshot tests make (copy-on-write), then npm packages from the lockfile.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(podman runc slirp4netns uidmap bubblewrap iptables iproute2 openssl chromium nginx-light haproxy caddy wrk nix-bin systemd curl openssh-server debootstrap systemd-container btrfs-progs xfsprogs)
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

# Podman sandboxes run in user namespaces of their own (`--userns=auto`): Podman takes their uid
# ranges from the `containers` entries of /etc/subuid and /etc/subgid (the range Podman's
# documentation suggests, far above any login's uids). Added once; an existing entry is kept.
for f in /etc/subuid /etc/subgid; do
  grep -q '^containers:' "$f" 2>/dev/null || echo "containers:2147483647:2147483648" >>"$f"
done

npm ci --no-audit --no-fund

/**
 * The address blocks of DESIGN §5b, in one place: the gateway's own checks
 * (`hypervisor/egress/allow-list.ts`) and the kernel rules of both runtimes (the process
 * sandboxes' namespaces, the Podman sandbox networks' fence) read them from here.
 */

/** Never reached by a sandbox, whatever the allow list: this host, link-local (the cloud metadata service), multicast, reserved. */
export const NEVER_BLOCKS = {
  ipv4: ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4"],
  ipv6: ["::1/128", "fe80::/10", "ff00::/8"],
};

/**
 * Private and special-use ranges, reached only where an allow-list CIDR names them (a test's own
 * "internet", an operator's internal mirror): RFC 1918, shared address space (RFC 6598), the IETF
 * and benchmarking blocks, the documentation blocks, unique local IPv6, site-local, and the
 * documentation prefix.
 */
export const PRIVATE_BLOCKS = {
  ipv4: [
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
  ],
  ipv6: ["fc00::/7", "fec0::/10", "2001:db8::/32"],
};

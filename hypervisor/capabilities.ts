import { readFileSync } from "node:fs";

/**
 * A daemon not root but given capabilities as ambient ones (the Debian unit's CAP_NET_ADMIN,
 * for egress) passes them to every child it execs under its own uid: an uncontained sandbox
 * would hold CAP_NET_ADMIN and could rewrite the host's firewall. Such a daemon starts every
 * sandbox through `setpriv`, which clears the ambient and inheritable sets before the exec (the
 * bounding set needs CAP_SETPCAP to lower; NoNewPrivileges= keeps file capabilities from
 * raising them again). Root drops them itself by changing to the sandbox's uid.
 */
export function withoutCapabilities(argv: string[]): string[] {
  return ambientCapabilities() !== 0n ? ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--", ...argv] : argv;
}

/** This process's ambient capability set (a bit per capability, CAP_NET_ADMIN is 12): what the programs it execs inherit. */
export function ambientCapabilities(): bigint {
  try {
    const ambient = /^CapAmb:\s*([0-9a-f]+)$/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1];
    return ambient === undefined ? 0n : BigInt(`0x${ambient}`);
  } catch {
    return 0n;
  }
}

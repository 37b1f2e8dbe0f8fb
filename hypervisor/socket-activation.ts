import { ConfigError } from "./config.js";

/** The listeners systemd may hand over, by the FileDescriptorName= of their socket units (DESIGN §7a). */
export type ListenerName = "public" | "operator";

/** Inherited listening descriptors by name; a listener without one binds its own address. */
export type InheritedSockets = Partial<Record<ListenerName, number>>;

/** sd_listen_fds(3): SD_LISTEN_FDS_START, the first passed descriptor. */
const SD_LISTEN_FDS_START = 3;

const isListenerName = (name: string): name is ListenerName => name === "public" || name === "operator";

/**
 * The listening sockets systemd passed, as sd_listen_fds_with_names(3) reads them: LISTEN_FDS
 * descriptors from 3 on, named by LISTEN_FDNAMES, and meant for this process only when LISTEN_PID
 * is its pid. Like sd_listen_fds(unset_environment=1) it removes the three variables whatever
 * they held, so no child (a sandbox) is told of descriptors that are not its own.
 *
 * The descriptors need no FD_CLOEXEC from us: Node marks inherited descriptors above 2
 * close-on-exec at start, so no sandbox inherits them (test/faults/daemon-restart.test.ts checks).
 */
export function takeInheritedSockets(env: NodeJS.ProcessEnv, pid: number): InheritedSockets {
  const { LISTEN_PID: forPid, LISTEN_FDS: count, LISTEN_FDNAMES: names } = env;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  // Not for us, e.g. a wrapper forked instead of exec'ing: sd_listen_fds(3) then reports none.
  if (count === undefined || forPid !== String(pid)) return {};
  if (!/^[1-9]\d{0,3}$/.test(count)) throw new ConfigError("LISTEN_FDS", "a number of passed descriptors", count);
  const named = names?.split(":") ?? [];
  if (named.length !== Number(count)) throw new ConfigError("LISTEN_FDNAMES", `${count} names, one per descriptor of LISTEN_FDS`, names);
  const sockets: InheritedSockets = {};
  named.forEach((name, i) => {
    if (!isListenerName(name) || sockets[name] !== undefined) {
      throw new ConfigError("LISTEN_FDNAMES", "public and operator, each at most once (FileDescriptorName= of the socket units)", names);
    }
    sockets[name] = SD_LISTEN_FDS_START + i;
  });
  return sockets;
}

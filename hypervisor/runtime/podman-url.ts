import { HypervisorError } from "../errors.js";

/** A host's Podman API URL, parsed: `unix:///path`, `tcp://addr:port` or `ssh://user@host[:port]/path`. */
export type PodmanUrl =
  | { transport: "unix"; socketPath: string }
  | { transport: "tcp"; host: string; port: number }
  | { transport: "ssh"; user: string; host: string; port: number; socketPath: string };

export function parsePodmanUrl(raw: string): PodmanUrl {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new HypervisorError("validation_failed", `${raw} is not a URL (unix:///path, tcp://addr:port or ssh://user@host[:port]/path)`);
  }
  const bad = (why: string) => new HypervisorError("validation_failed", `${raw}: ${why}`);
  if (url.search || url.hash) throw bad("no query or fragment is allowed");
  switch (url.protocol) {
    case "unix:":
      if (url.host || !url.pathname.startsWith("/") || url.pathname === "/") throw bad("a unix URL is unix:///absolute/path/podman.sock");
      return { transport: "unix", socketPath: decodeURIComponent(url.pathname) };
    case "tcp:":
      if (!url.hostname || !url.port || (url.pathname && url.pathname !== "/")) throw bad("a tcp URL is tcp://address:port");
      return { transport: "tcp", host: url.hostname.replace(/^\[|\]$/g, ""), port: Number(url.port) };
    case "ssh:":
      if (!url.username || !url.hostname || url.password) throw bad("an ssh URL is ssh://user@host[:port]/path/podman.sock, without a password");
      if (!url.pathname.startsWith("/") || url.pathname === "/") throw bad("the ssh URL needs the remote socket's path");
      return {
        transport: "ssh",
        user: decodeURIComponent(url.username),
        host: url.hostname.replace(/^\[|\]$/g, ""),
        port: url.port ? Number(url.port) : 22,
        socketPath: decodeURIComponent(url.pathname),
      };
    default:
      throw bad("the transport must be unix, tcp or ssh");
  }
}

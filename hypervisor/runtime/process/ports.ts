import { readFileSync } from "node:fs";
import { createServer } from "node:net";

const PORT_TRIES = 50;

/**
 * Loopback ports for sandboxes that share the host's network (uncontained, or contained without
 * a network of their own). A port handed out stays reserved for `holdMs`, so two starts at once
 * never get the same one.
 */
export class LoopbackPorts {
  private readonly handedOut = new Map<number, number>();

  constructor(
    private readonly host: string,
    private readonly holdMs: number,
  ) {}

  /** An unused loopback port for a sandbox. */
  async free(): Promise<number> {
    const range = sandboxPorts();
    if (!range) return this.bindable(0);
    const now = Date.now();
    for (const [port, at] of this.handedOut) if (now - at > this.holdMs) this.handedOut.delete(port);
    for (let i = 0; i < PORT_TRIES; i++) {
      const port = range.low + Math.floor(Math.random() * (range.high - range.low + 1));
      if (this.handedOut.has(port)) continue;
      const free = await this.bindable(port).then(
        () => true,
        () => false,
      );
      if (!free) continue;
      this.handedOut.set(port, now);
      return port;
    }
    return this.bindable(0);
  }

  /** Binds `port` (0: the kernel's choice) on loopback and releases it, answering the port. */
  private bindable(port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const server = createServer();
      server.once("error", reject);
      server.listen(port, this.host, () => {
        const address = server.address();
        server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
      });
    });
  }
}

/**
 * Ports handed to sandboxes lie below the kernel's ephemeral range, so no outgoing connection
 * (a health probe, a proxied request, any other program's) can take one between the check here
 * and the sandbox's own bind: with thousands of probes a second, a port the kernel picked from
 * that range was taken often enough to fail starts. Where nothing lies below it, the kernel picks.
 */
function sandboxPorts(): { low: number; high: number } | undefined {
  try {
    const ephemeralLow = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "latin1").trim().split(/\s+/)[0]);
    const low = Math.max(1024, Math.floor(ephemeralLow / 2));
    return ephemeralLow - low >= 1024 ? { low, high: ephemeralLow - 1 } : undefined;
  } catch {
    return undefined;
  }
}

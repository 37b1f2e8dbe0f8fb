import { join } from "node:path";
import { PublicClient, SoftwareAuthenticator } from "./authenticator.js";
import { daemonEnv, spawnDaemon, type SpawnedDaemon } from "./daemon.js";
import { ListenSockets } from "./listen-sockets.js";
import { LoadLoop, type Sample } from "./load.js";
import { freePort } from "./ports.js";
import { ReconnectingSocket } from "./ws-client.js";

export const ORIGIN = "http://hv.test";

/** One restart as systemd does it: SIGTERM, wait for the exit, start again on the same sockets. */
export interface Restart {
  sigtermAt: number;
  exitedAt: number;
  /** The new daemon's first answer (GET /status on the operator socket). */
  answeredAt: number;
  exitCode: number | null;
}

/**
 * A daemon with one registered user, restarted as often as a test asks while that user's
 * keep-alive HTTP clients and WebSockets keep working against it. Socket-activated (the sockets
 * held across restarts, as systemd holds them) unless `socketActivation: false`: then each daemon
 * binds the same port itself, as without systemd's socket unit.
 */
export class RestartHarness {
  private constructor(
    readonly sockets: ListenSockets | undefined,
    readonly publicUrl: string,
    private readonly env: Record<string, string>,
    public daemon: SpawnedDaemon,
    readonly user: string,
    readonly cookie: string,
  ) {}

  static async start(stateDir: string, user: string, extra: Record<string, string> = {}, { socketActivation = true } = {}): Promise<RestartHarness> {
    const sockets = socketActivation ? await ListenSockets.bind(join(stateDir, "operator.sock")) : undefined;
    const publicUrl = sockets?.publicUrl ?? `http://127.0.0.1:${await freePort()}`;
    const env = daemonEnv(stateDir, { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN, HYPERVISOR_LISTEN: new URL(publicUrl).host, ...extra });
    const daemon = await spawnDaemon(env, { sockets });
    const client = new PublicClient(publicUrl, ORIGIN);
    const registered = await client.register(user, new SoftwareAuthenticator(ORIGIN));
    if (!client.cookie) throw new Error(`registration failed: ${JSON.stringify(registered.body)}`);
    // Started on demand: the load begins with a running sandbox.
    const first = await client.get("/whoami");
    if (first.status !== 200) throw new Error(`the sandbox did not start: ${first.status} ${first.text}`);
    return new RestartHarness(sockets, publicUrl, env, daemon, user, `hv_session=${client.cookie}`);
  }

  /** `http` keep-alive GET loops on /whoami and `websockets` reconnecting echo sockets. */
  async load(http: number, websockets: number): Promise<{ stop(): Promise<{ samples: Sample[]; sockets: ReconnectingSocket[] }> }> {
    const loops = Array.from({ length: http }, () => new LoadLoop(this.publicUrl, "/whoami", this.cookie).start());
    const open = await Promise.all(
      Array.from({ length: websockets }, () => new ReconnectingSocket(this.publicUrl, "/ws/echo", { cookie: this.cookie, origin: ORIGIN }).start()),
    );
    return {
      async stop() {
        const samples = (await Promise.all(loops.map((loop) => loop.stop()))).flat();
        await Promise.all(open.map((socket) => socket.stop()));
        return { samples, sockets: open };
      },
    };
  }

  async restart(): Promise<Restart> {
    const sigtermAt = performance.now();
    const exitCode = await this.daemon.kill("SIGTERM");
    const exitedAt = performance.now();
    await this.startAgain();
    return { sigtermAt, exitedAt, answeredAt: performance.now(), exitCode };
  }

  /** A new daemon (on the held sockets), once the last one has exited; resolves when it answers. `extra`: variables it is started with besides. */
  async startAgain(extra: Record<string, string> = {}): Promise<void> {
    this.daemon = await spawnDaemon({ ...this.env, ...extra }, { sockets: this.sockets });
  }

  /** Stops the user's sandboxes (a SIGTERM leaves them running), the daemon, then the sockets. */
  async close(): Promise<void> {
    for (const role of ["live", "dev"]) await this.daemon.operator.post(`/sandboxes/${this.user}/${role}/stop`);
    await this.daemon.kill("SIGTERM");
    await this.sockets?.close();
  }
}

import { join } from "node:path";
import { PublicClient, SoftwareAuthenticator } from "./authenticator.js";
import { daemonEnv, spawnDaemon, type SpawnedDaemon } from "./daemon.js";
import { ListenSockets } from "./listen-sockets.js";
import { LoadLoop, type Sample } from "./load.js";
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
 * A socket-activated daemon with one registered user, restarted as often as a test asks while
 * that user's keep-alive HTTP clients and WebSockets keep working against it.
 */
export class RestartHarness {
  private constructor(
    readonly sockets: ListenSockets,
    private readonly env: Record<string, string>,
    public daemon: SpawnedDaemon,
    readonly user: string,
    readonly cookie: string,
  ) {}

  static async start(stateDir: string, user: string, extra: Record<string, string> = {}): Promise<RestartHarness> {
    const sockets = await ListenSockets.bind(join(stateDir, "operator.sock"));
    const env = daemonEnv(stateDir, { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN, ...extra });
    const daemon = await spawnDaemon(env, { sockets });
    const client = new PublicClient(sockets.publicUrl, ORIGIN);
    const registered = await client.register(user, new SoftwareAuthenticator(ORIGIN));
    if (!client.cookie) throw new Error(`registration failed: ${JSON.stringify(registered.body)}`);
    // Started on demand: the load begins with a running sandbox.
    const first = await client.get("/whoami");
    if (first.status !== 200) throw new Error(`the sandbox did not start: ${first.status} ${first.text}`);
    return new RestartHarness(sockets, env, daemon, user, `hv_session=${client.cookie}`);
  }

  /** `http` keep-alive GET loops on /whoami and `websockets` reconnecting echo sockets. */
  async load(http: number, websockets: number): Promise<{ stop(): Promise<{ samples: Sample[]; sockets: ReconnectingSocket[] }> }> {
    const loops = Array.from({ length: http }, () => new LoadLoop(this.sockets.publicUrl, "/whoami", this.cookie).start());
    const open = await Promise.all(
      Array.from({ length: websockets }, () => new ReconnectingSocket(this.sockets.publicUrl, "/ws/echo", { cookie: this.cookie, origin: ORIGIN }).start()),
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

  /** A new daemon on the held sockets, once the last one has exited; resolves when it answers. */
  async startAgain(): Promise<void> {
    this.daemon = await spawnDaemon(this.env, { sockets: this.sockets });
  }

  /** Stops the user's sandboxes (a SIGTERM leaves them running), the daemon, then the sockets. */
  async close(): Promise<void> {
    for (const role of ["live", "dev"]) await this.daemon.operator.post(`/sandboxes/${this.user}/${role}/stop`);
    await this.daemon.kill("SIGTERM");
    await this.sockets.close();
  }
}

import { once } from "node:events";
import { Worker } from "node:worker_threads";
import type { WorkerInput, WorkerOutput } from "./listen-sockets-worker.js";

/**
 * What systemd does for socket activation (sd_listen_fds(3)), for tests: binds the public and
 * the operator socket once, holds them while daemons come and go, and passes them to each start
 * as descriptors 3 and 4 (see spawnDaemon), so connections made between two daemons wait in the
 * kernel's accept queue instead of being refused.
 *
 * systemd never accepts on an Accept=no socket. A listener on this process's event loop would,
 * stealing the connections queued for the next daemon; so a worker thread binds them and then
 * blocks (Atomics.wait): its event loop never runs again, while the descriptors, which belong
 * to the process, stay open and can be passed on.
 */
export class ListenSockets {
  private constructor(
    private readonly worker: Worker,
    private readonly wake: Int32Array,
    /** In the order spawnDaemon passes them: LISTEN_FDNAMES=public:operator. */
    readonly fds: readonly [publicFd: number, operatorFd: number],
    /** The public listener's port on 127.0.0.1. */
    readonly port: number,
  ) {}

  static async bind(operatorSocket: string): Promise<ListenSockets> {
    const wake = new SharedArrayBuffer(4);
    const input: WorkerInput = { host: "127.0.0.1", operatorSocket, wake };
    const worker = new Worker(new URL("./listen-sockets-worker.js", import.meta.url), { workerData: input });
    const [ready] = (await Promise.race([once(worker, "message"), once(worker, "error").then(([err]) => Promise.reject(err))])) as [WorkerOutput];
    return new ListenSockets(worker, new Int32Array(wake), [ready.publicFd, ready.operatorFd], ready.port);
  }

  get publicUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Closes both sockets (removing the operator socket file), as stopping the socket units does. */
  async close(): Promise<void> {
    const exited = once(this.worker, "exit");
    Atomics.store(this.wake, 0, 1);
    Atomics.notify(this.wake, 0);
    await exited;
  }
}

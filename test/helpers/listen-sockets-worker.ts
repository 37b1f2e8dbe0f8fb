// The thread of ListenSockets (listen-sockets.ts): binds the two listeners, reports their
// descriptors, then blocks for good, so its event loop never accepts a connection.
import { createServer, type AddressInfo, type Server } from "node:net";
import { parentPort, workerData } from "node:worker_threads";

export interface WorkerInput {
  host: string;
  operatorSocket: string;
  /** One Int32: the parent sets it to 1 and notifies to let this thread close and exit. */
  wake: SharedArrayBuffer;
}

export interface WorkerOutput {
  publicFd: number;
  operatorFd: number;
  port: number;
}

const { host, operatorSocket, wake } = workerData as WorkerInput;
const fdOf = (server: Server) => (server as unknown as { _handle: { fd: number } })._handle.fd;

const publicServer = createServer();
const operatorServer = createServer();
publicServer.listen({ host, port: 0 }, () => {
  operatorServer.listen({ path: operatorSocket }, () => {
    const ready: WorkerOutput = { publicFd: fdOf(publicServer), operatorFd: fdOf(operatorServer), port: (publicServer.address() as AddressInfo).port };
    parentPort!.postMessage(ready);
    Atomics.wait(new Int32Array(wake), 0, 0);
    publicServer.close();
    operatorServer.close();
  });
});

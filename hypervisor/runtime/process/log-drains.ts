import { execFileSync } from "node:child_process";
import { closeSync, constants, fstatSync, openSync, renameSync, rmSync, writeSync } from "node:fs";
import { Socket } from "node:net";
import { join } from "node:path";

/** The file a sandbox's output is kept in, in its record directory; the older half is `<file>.1`. */
export const LOG_FILE = "sandbox.log";
/** The named pipe a sandbox writes its stdout and stderr to, in its record directory. */
export const LOG_PIPE = "sandbox.pipe";
/**
 * What the daemon drains from one sandbox a second at most: past it the sandbox's own writes
 * wait on its full pipe, so a flooder slows itself, not the daemon or anyone else.
 */
const DRAIN_BYTES_PER_SECOND = 1024 * 1024;

/**
 * A sandbox's log, bounded: the current file up to half the bound, then it becomes `<file>.1`
 * (replacing the one before) and a new one begins. Only the daemon writes it.
 */
class LogStore {
  private fd: number;
  private size: number;
  private readonly half: number;

  constructor(
    private readonly path: string,
    maxBytes: number,
  ) {
    this.half = Math.max(1, Math.floor(maxBytes / 2));
    this.fd = openSync(path, "a", 0o600);
    this.size = fstatSync(this.fd).size;
  }

  write(chunk: Buffer): void {
    for (let at = 0; at < chunk.length;) {
      if (this.size >= this.half) this.rotate();
      const part = chunk.subarray(at, at + (this.half - this.size));
      writeSync(this.fd, part);
      this.size += part.length;
      at += part.length;
    }
  }

  close(): void {
    closeSync(this.fd);
  }

  private rotate(): void {
    closeSync(this.fd);
    renameSync(this.path, `${this.path}.1`);
    this.fd = openSync(this.path, "a", 0o600);
    this.size = 0;
  }
}

/**
 * Sandboxes' output, through a pipe the daemon drains: a sandbox never holds a descriptor of a
 * file the daemon reads, so it can neither grow nor truncate its log (DESIGN §8b). The pipe is
 * a FIFO in the sandbox's record directory, which the sandbox holds open for reading and writing
 * both: while no daemon reads it (a restart), its writes never fail with EPIPE, they wait once
 * the pipe's buffer is full, and the next daemon opens the FIFO again and drains the rest. One
 * drain per sandbox, read without a thread (the pipe is polled like a socket).
 */
export class LogDrains {
  private readonly drains = new Map<string, Socket>();

  /**
   * A fresh pipe for a sandbox about to start in `dir`, drained into its log from now on, and
   * the descriptor the sandbox gets as stdout and stderr: the caller closes it once spawned.
   */
  open(dir: string, maxBytes: number): number {
    this.close(dir);
    const pipe = join(dir, LOG_PIPE);
    rmSync(pipe, { force: true });
    execFileSync("mkfifo", ["-m", "600", pipe]);
    // Read-write: opening it does not wait for a reader, and it keeps one open for the sandbox.
    const fd = openSync(pipe, constants.O_RDWR);
    this.attach(dir, maxBytes);
    return fd;
  }

  /** Drains a running sandbox's pipe again (after a restart of the daemon); a no-op without one. */
  attach(dir: string, maxBytes: number): void {
    if (this.drains.has(dir)) return;
    let fd: number;
    try {
      fd = openSync(join(dir, LOG_PIPE), constants.O_RDONLY | constants.O_NONBLOCK);
    } catch {
      return;
    }
    const store = new LogStore(join(dir, LOG_FILE), maxBytes);
    const pipe = new Socket({ fd, readable: true, writable: false });
    // A sandbox outlives the daemon: its pipe never keeps the daemon's process alive.
    pipe.unref();
    let second = 0;
    let drained = 0;
    let paused: NodeJS.Timeout | undefined;
    pipe.on("data", (chunk: Buffer) => {
      store.write(chunk);
      const now = Math.floor(Date.now() / 1000);
      if (now !== second) [second, drained] = [now, 0];
      drained += chunk.length;
      if (drained < DRAIN_BYTES_PER_SECOND) return;
      pipe.pause();
      paused = setTimeout(() => pipe.resume(), (second + 1) * 1000 - Date.now());
      paused.unref();
    });
    // Every writer gone: the sandbox and all it forked have exited.
    pipe.once("close", () => {
      clearTimeout(paused);
      store.close();
      if (this.drains.get(dir) === pipe) this.drains.delete(dir);
    });
    pipe.on("error", () => pipe.destroy());
    this.drains.set(dir, pipe);
  }

  /** Stops draining `dir`'s pipe (the sandbox is gone, or the daemon closes). */
  close(dir: string): void {
    this.drains.get(dir)?.destroy();
  }
}

import { request, Agent } from "node:http";

export interface Sample {
  started: number;
  /** From sending the request to the end of its response, or to its error. */
  ms: number;
  status: number;
  generation: string | undefined;
  error?: string;
}

/**
 * Sequential keep-alive GETs through the public listener until stopped: one loop is one
 * client, so its samples are in request order and show when its generation changed.
 */
export class LoadLoop {
  readonly samples: Sample[] = [];
  private running = true;
  private readonly agent = new Agent({ keepAlive: true, maxSockets: 1 });
  private done: Promise<void> | undefined;

  constructor(
    private readonly url: string,
    private readonly path: string,
    private readonly cookie: string,
  ) {}

  start(): this {
    this.done = (async () => {
      while (this.running) this.samples.push(await this.once());
    })();
    return this;
  }

  async stop(): Promise<Sample[]> {
    this.running = false;
    await this.done;
    this.agent.destroy();
    return this.samples;
  }

  private once(): Promise<Sample> {
    const started = performance.now();
    const { hostname, port } = new URL(this.url);
    return new Promise((resolve) => {
      const done = (status: number, generation: string | undefined, error?: Error) =>
        resolve({ started, ms: performance.now() - started, status, generation, ...(error && { error: error.message }) });
      const req = request({ host: hostname, port, path: this.path, agent: this.agent, headers: { cookie: this.cookie } }, (res) => {
        res.resume();
        res.on("end", () => done(res.statusCode ?? 0, res.headers["x-hypervisor-generation"] as string | undefined));
        res.on("error", (err) => done(0, undefined, err));
      });
      req.on("error", (err) => done(0, undefined, err));
      req.end();
    });
  }
}

/** Consecutive distinct values: [1,1,2,2,1] → [1,2,1]. */
export function runs<T>(values: T[]): T[] {
  return values.filter((v, i) => i === 0 || v !== values[i - 1]);
}

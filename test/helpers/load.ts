import { request, Agent } from "node:http";

export interface Sample {
  started: number;
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
      const req = request({ host: hostname, port, path: this.path, agent: this.agent, headers: { cookie: this.cookie } }, (res) => {
        res.resume();
        res.on("end", () => resolve({ started, status: res.statusCode ?? 0, generation: res.headers["x-hypervisor-generation"] as string | undefined }));
        res.on("error", (err) => resolve({ started, status: 0, generation: undefined, error: err.message }));
      });
      req.on("error", (err) => resolve({ started, status: 0, generation: undefined, error: err.message }));
      req.end();
    });
  }
}

/** Consecutive distinct values: [1,1,2,2,1] → [1,2,1]. */
export function runs<T>(values: T[]): T[] {
  return values.filter((v, i) => i === 0 || v !== values[i - 1]);
}

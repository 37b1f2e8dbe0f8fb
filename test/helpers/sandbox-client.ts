import { WebSocket } from "ws";
import type { Endpoint } from "../../proxy/target.js";

export function baseUrl(endpoint: Endpoint): string {
  return `http://${endpoint.host}:${endpoint.port}`;
}

export async function getJson<T = any>(url: string, init?: RequestInit): Promise<{ status: number; body: T; headers: Headers }> {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // leave as text
  }
  return { status: res.status, body: body as T, headers: res.headers };
}

/** Runs one task through the reference sandbox's WebSocket flow; resolves with its result. */
export function runTask(
  wsUrl: string,
  input: string,
  opts: { headers?: Record<string, string>; steps?: number } = {},
): Promise<{ output: string; progress: number }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl, { headers: opts.headers });
    const id = Math.random().toString(36).slice(2);
    let progress = 0;
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`task ${id} timed out`));
    }, 10_000);
    ws.on("open", () => ws.send(JSON.stringify({ type: "task", id, input, steps: opts.steps ?? 2 })));
    ws.on("message", (data) => {
      const msg = JSON.parse(String(data)) as { type: string; output?: string; message?: string };
      if (msg.type === "progress") progress++;
      if (msg.type === "result") {
        clearTimeout(timer);
        ws.close();
        resolve({ output: msg.output!, progress });
      }
      if (msg.type === "error") {
        clearTimeout(timer);
        ws.close();
        reject(new Error(msg.message));
      }
    });
    ws.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

export async function taskInputs(endpoint: Endpoint): Promise<string[]> {
  const { body } = await getJson<{ tasks: { input: string }[] }>(`${baseUrl(endpoint)}/api/tasks`);
  return body.tasks.map((t) => t.input);
}

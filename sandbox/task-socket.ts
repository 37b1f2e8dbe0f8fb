import type { WebSocket } from "ws";
import type { TaskStore } from "./task-store.js";

const STEP_MS = 50;
const MAX_STEPS = 20;
const DEFAULT_STEPS = 3;
const MAX_ID_LENGTH = 200;
const MAX_INPUT_LENGTH = 10_000;

interface Task {
  id: string;
  input: string;
  steps: number;
}

/**
 * `/ws`: the client sends `{type:"task",id,input,steps}`, the server answers with one `progress`
 * per step and then a `result`. Tasks on one socket run concurrently; closing the socket
 * abandons the unfinished ones.
 */
export function handleTaskSocket(socket: WebSocket, deps: { version: string; tasks: TaskStore }): void {
  const timers = new Set<NodeJS.Timeout>();
  const send = (message: Record<string, unknown>): void => {
    if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(message));
  };

  const run = (task: Task, step: number): void => {
    const timer = setTimeout(() => {
      timers.delete(timer);
      send({ type: "progress", id: task.id, step, of: task.steps });
      if (step < task.steps) {
        run(task, step + 1);
        return;
      }
      const output = task.input.toUpperCase();
      try {
        deps.tasks.append({ id: task.id, input: task.input, output, at: new Date().toISOString(), version: deps.version });
      } catch (error) {
        send({ type: "error", id: task.id, message: `could not save the task: ${(error as Error).message}` });
        return;
      }
      send({ type: "result", id: task.id, output, version: deps.version });
    }, STEP_MS);
    timers.add(timer);
  };

  socket.on("message", (data, isBinary) => {
    const parsed = isBinary ? { error: "expected a JSON text message" } : parseTask(data.toString());
    if ("error" in parsed) {
      send({ type: "error", message: parsed.error });
      return;
    }
    run(parsed, 1);
  });
  socket.on("close", () => {
    for (const timer of timers) clearTimeout(timer);
    timers.clear();
  });
}

function parseTask(text: string): Task | { error: string } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { error: "message is not valid JSON" };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return { error: "message must be a JSON object" };
  const { type, id, input, steps = DEFAULT_STEPS } = value as Record<string, unknown>;
  if (type !== "task") return { error: 'type must be "task"' };
  if (typeof id !== "string" || id === "" || id.length > MAX_ID_LENGTH) {
    return { error: `id must be a non-empty string of at most ${MAX_ID_LENGTH} characters` };
  }
  if (typeof input !== "string" || input.length > MAX_INPUT_LENGTH) {
    return { error: `input must be a string of at most ${MAX_INPUT_LENGTH} characters` };
  }
  if (typeof steps !== "number" || !Number.isInteger(steps) || steps < 1 || steps > MAX_STEPS) {
    return { error: `steps must be an integer from 1 to ${MAX_STEPS}` };
  }
  return { id, input, steps };
}

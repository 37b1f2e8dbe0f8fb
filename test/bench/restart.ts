import { setTimeout as sleep } from "node:timers/promises";
import { tempDir } from "../helpers/daemon.js";
import type { Sample } from "../helpers/load.js";
import { podmanInstalled, withPodmanService } from "../helpers/podman.js";
import { RestartHarness, type Restart } from "../helpers/restart-harness.js";
import { testUser } from "../helpers/run-id.js";
import type { ReconnectingSocket } from "../helpers/ws-client.js";
import { summarize } from "./stats.js";

const RESTARTS = 5;
const STEADY_MS = 1500;
/** The scenario: one user with 4 keep-alive clients and one open WebSocket. */
const HTTP_CLIENTS = 4;
const WEBSOCKETS = 1;

interface Run {
  samples: Sample[];
  sockets: ReconnectingSocket[];
  restarts: Restart[];
}

/** Steady traffic, then RESTARTS restarts with steady traffic between them. */
async function restartsUnderLoad(env: Record<string, string>, label: string, socketActivation: boolean): Promise<Run> {
  const state = tempDir();
  const harness = await RestartHarness.start(state.path, testUser(`bench-${label}`), env, { socketActivation });
  try {
    const load = await harness.load(HTTP_CLIENTS, WEBSOCKETS);
    const restarts: Restart[] = [];
    for (let i = 0; i < RESTARTS; i++) {
      await sleep(STEADY_MS);
      restarts.push(await harness.restart());
    }
    await sleep(STEADY_MS);
    return { ...(await load.stop()), restarts };
  } finally {
    await harness.close();
    state.remove();
  }
}

const ms = (n: number) => n.toFixed(0);

function printRuns(title: string, runs: [string, Run][]): void {
  console.log(`\n${title}`);
  console.log(
    `${"".padEnd(34)}${"requests".padStart(9)}${"failed".padStart(8)}${"p50 ms".padStart(8)}${"p99 steady".padStart(12)}${"p99 restart".padStart(13)}${"max ms".padStart(8)}${"WS closes, reconnects".padStart(28)}`,
  );
  for (const [name, { samples, sockets, restarts }] of runs) {
    // A request belongs to a restart when it was sent between the SIGTERM and the new daemon's first answer.
    const during = (s: Sample) => restarts.some((r) => s.started >= r.sigtermAt && s.started <= r.answeredAt);
    const steady = summarize(samples.filter((s) => !during(s)).map((s) => s.ms));
    const restart = summarize(samples.filter(during).map((s) => s.ms));
    const failed = samples.filter((s) => s.status !== 200).length;
    // Our own close at the end (1000) is not the daemon's doing.
    const codes = sockets.flatMap((s) => (s.closeCodes.at(-1) === 1000 ? s.closeCodes.slice(0, -1) : s.closeCodes));
    const reconnects = sockets.reduce((n, s) => n + s.opens - 1, 0);
    const closes = `${codes.filter((c) => c === 1012).length}×1012 ${codes.filter((c) => c !== 1012).length}×other ${reconnects} back`;
    console.log(
      `${name.padEnd(34)}${String(samples.length).padStart(9)}${String(failed).padStart(8)}${ms(steady.median).padStart(8)}${ms(steady.p99).padStart(12)}${ms(restart.p99).padStart(13)}${ms(restart.max).padStart(8)}${closes.padStart(28)}`,
    );
  }
  const [, activated] = runs[0]!;
  const phases = [
    ["SIGTERM → old daemon exited", (r: Restart) => r.exitedAt - r.sigtermAt],
    ["exec → new daemon answering", (r: Restart) => r.answeredAt - r.exitedAt],
    ["SIGTERM → new daemon answering", (r: Restart) => r.answeredAt - r.sigtermAt],
  ] as const;
  console.log(`${"".padEnd(34)}${"median ms".padStart(10)}${"max ms".padStart(8)}   (${runs[0]![0]}, ${RESTARTS} restarts)`);
  for (const [phase, of] of phases) {
    const s = summarize(activated.restarts.map(of));
    console.log(`${phase.padEnd(34)}${ms(s.median).padStart(10)}${ms(s.max).padStart(8)}`);
  }
}

async function compare(env: Record<string, string>, label: string, title: string): Promise<void> {
  const activated = await restartsUnderLoad(env, `${label}-sa`, true);
  const bound = await restartsUnderLoad(env, `${label}-bind`, false);
  printRuns(title, [
    ["socket activation", activated],
    ["daemon binds itself (baseline)", bound],
  ]);
}

export async function restartBench(): Promise<void> {
  const scenario = `${HTTP_CLIENTS} keep-alive clients + ${WEBSOCKETS} WebSocket, ${RESTARTS} restarts (SIGTERM, exit, start)`;
  await compare({}, "proc", `Restart under load, process runtime: ${scenario}`);
  if (!podmanInstalled()) {
    console.log("\n(podman not installed: podman figures skipped)");
    return;
  }
  await withPodmanService((service) =>
    compare({ HYPERVISOR_RUNTIME: "podman", HYPERVISOR_PODMAN_SOCKET: service.socketPath }, "pod", `Restart under load, podman runtime: ${scenario}`),
  );
}

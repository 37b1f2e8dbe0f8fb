import { coldStartBench } from "./cold-start.js";
import { dataBench } from "./data.js";
import { dataPlaneWorkersBench } from "./data-plane-workers.js";
import { egressBench } from "./egress.js";
import { fleetBench } from "./fleet.js";
import { floodsBench } from "./floods.js";
import { freezeBench } from "./freeze.js";
import { hostsBench } from "./hosts.js";
import { proxyBench } from "./proxy.js";
import { releaseBench } from "./releases.js";
import { restartBench } from "./restart.js";
import { vethBench } from "./veth.js";

// Figures are ratios against a baseline measured side by side in the same run, never
// thresholds: the machine's speed changes, the ratio is what says something.
// `npm run bench -- proxy` runs only the named parts.
const parts: Record<string, () => Promise<void>> = {
  "cold-start": coldStartBench,
  data: dataBench,
  egress: egressBench,
  fleet: fleetBench,
  floods: floodsBench,
  freeze: freezeBench,
  hosts: hostsBench,
  proxy: proxyBench,
  releases: releaseBench,
  restart: restartBench,
  veth: vethBench,
  workers: dataPlaneWorkersBench,
};
const wanted = process.argv.slice(2);
for (const [name, bench] of Object.entries(parts)) {
  if (wanted.length === 0 || wanted.includes(name)) await bench();
}

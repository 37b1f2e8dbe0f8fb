import { coldStartBench } from "./cold-start.js";

// Figures are ratios against a baseline measured side by side in the same run, never
// thresholds: the machine's speed changes, the ratio is what says something.
await coldStartBench();

// DESIGN §5b on the process runtime: each sandbox's own network namespace holds it to the mode.
import { egressScript, egressSuite } from "./egress-suite.js";

egressSuite(
  "process",
  {
    env: () => ({ HYPERVISOR_PROCESS_NETWORK: "10.252.0.0/16" }),
    generation: () => ({ command: [process.execPath, egressScript] }),
    // Its own address in its own namespace: the one another sandbox would try.
    peer: async (_user, _slot, endpoint) => endpoint,
  },
  false,
);

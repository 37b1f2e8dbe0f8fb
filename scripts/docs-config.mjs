// Writes docs/configuration.md from the config table (run after `npm run build`).
import { writeFileSync } from "node:fs";
import { configurationDoc } from "../dist/hypervisor/config-doc.js";

writeFileSync(new URL("../docs/configuration.md", import.meta.url), configurationDoc());

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { Config } from "../config.js";
import type { ContainerRuntime } from "../runtime/container-runtime.js";
import type { Generation, GenerationStore } from "./generation-store.js";

const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));

/** The reference sandbox as the process runtime runs it: this build's node and compiled app. */
export function referenceSandboxCommand(): { command: string[]; version: string } {
  const { version } = JSON.parse(readFileSync(`${repoRoot}package.json`, "utf8")) as { version: string };
  return { command: [process.execPath, `${repoRoot}dist/sandbox/server.js`, `--version=${version}`], version };
}

/**
 * The generation a new user's slots start with: the newest known-good one, else the first ever
 * recorded, which on an empty database is created from the configured image (podman, resolved
 * to its immutable ID) or the reference sandbox command (process). Never pulls anything.
 */
export async function defaultGeneration(
  store: GenerationStore,
  { runtime, takes }: { runtime: ContainerRuntime; takes: "image" | "command" },
  config: Pick<Config, "sandboxImage">,
): Promise<Generation> {
  const all = store.list().filter((g) => g.runtime === runtime.kind);
  const knownGood = all.filter((g) => g.state === "known-good").at(-1);
  if (knownGood) return knownGood;
  if (all[0]) return all[0];
  if (takes === "image") {
    const { imageId, version } = await runtime.resolveImage(config.sandboxImage);
    return store.add({ runtime: "podman", image: config.sandboxImage, imageId, version });
  }
  return store.add({ runtime: runtime.kind, ...referenceSandboxCommand() });
}

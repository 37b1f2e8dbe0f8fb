import { configVariables, type Bounds } from "./config.js";

function range(b: Bounds): string {
  const show = (n: number) => (b.kind === "size" ? `${n / 1024 ** 2} MiB` : n === Number.MAX_SAFE_INTEGER ? "no limit" : String(n));
  return b.max === undefined || b.max === Number.MAX_SAFE_INTEGER ? `at least ${show(b.min)}` : `${show(b.min)} to ${show(b.max)}`;
}

const cell = (text: string) => text.replace(/\|/g, "\\|");

/**
 * docs/configuration.md, rendered from the one config table (`npm run docs:config` writes it;
 * a test fails when the committed file differs), so the page cannot drift from the parser.
 */
export function configurationDoc(): string {
  const rows = configVariables.map((v) => {
    const bounds = "bounds" in v ? ` Accepts ${range(v.bounds)}.` : "";
    const secret = "secret" in v && v.secret ? " A file path: the secret itself never goes into the environment." : "";
    const meaning = `${v.description[0]!.toUpperCase()}${v.description.slice(1)}`;
    return `| \`${v.name}\` | ${v.default === undefined ? "unset" : v.default === "" ? "empty" : `\`${cell(v.default)}\``} | ${cell(meaning)}.${bounds}${secret} |`;
  });
  return [
    "# Configuration",
    "",
    "<!-- Generated from the table in hypervisor/config.ts by `npm run docs:config`; do not edit by hand. -->",
    "",
    "Every setting is an environment variable, read once when the daemon starts. A wrong value stops",
    "the daemon with a message naming the variable. Secrets are never values: they are read from files",
    "(`*_FILE`, or systemd's `$CREDENTIALS_DIRECTORY`).",
    "",
    "| variable | default | meaning |",
    "|---|---|---|",
    ...rows,
    "",
  ].join("\n");
}

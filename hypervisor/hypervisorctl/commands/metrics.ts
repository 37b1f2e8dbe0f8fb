import type { Command } from "../command.js";

export const METRICS_COMMANDS: Command[] = [
  {
    name: "metrics",
    usage: "metrics",
    summary: "the Prometheus metrics, as text (--json does not apply)",
    args: [0, 0],
    async run(ctx) {
      ctx.out(await ctx.api.text("/metrics"));
      return 0;
    },
  },
];

import { UsageError, type Command } from "../command.js";
import { completionScript, SHELLS, type Shell } from "../completion-script.js";
import { GLOBAL_OPTIONS } from "../options.js";

/** `completion bash|zsh`, made from `commands`: the whole table, this command among them. */
export function completionCommand(commands: () => Command[]): Command {
  return {
    name: "completion",
    usage: "completion bash|zsh",
    summary: "a shell completion script for every command and option (--json does not apply)",
    details: ["bash: hypervisorctl completion bash > /etc/bash_completion.d/hypervisorctl", "zsh:  source <(hypervisorctl completion zsh)  in ~/.zshrc"],
    args: [1, 1],
    async run(ctx, inv) {
      const shell = inv.args[0]!;
      if (!(SHELLS as readonly string[]).includes(shell)) throw new UsageError(`SHELL must be ${SHELLS.join(" or ")}, not '${shell}'`, "completion");
      ctx.out(completionScript(shell as Shell, commands(), GLOBAL_OPTIONS));
      return 0;
    },
  };
}

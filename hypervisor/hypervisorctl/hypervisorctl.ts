#!/usr/bin/env node
/**
 * hypervisorctl: the operator API from a shell, over the operator unix socket (default) or the
 * TCP listener with its bearer token. `hypervisorctl --help` lists the commands.
 */
import { runCli } from "./cli.js";

// `hypervisorctl audit | head`: a reader that goes away is not an error worth a stack trace.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(process.exitCode ?? 0);
  throw err;
});

process.exitCode = await runCli(process.argv.slice(2), {
  env: process.env,
  tty: process.stdout.isTTY === true,
  stdout: (text) => void process.stdout.write(text),
  stderr: (text) => void process.stderr.write(text),
});

/**
 * Every hypervisorctl command, one file per resource as the operator API has one route file per
 * resource (`operator/<resource>-routes.ts`). The order here is the order of the help and of
 * the completion script.
 */
import type { Command } from "../command.js";
import { AUDIT_COMMANDS } from "./audit.js";
import { BACKUP_COMMANDS } from "./backup.js";
import { completionCommand } from "./completion.js";
import { EGRESS_COMMANDS } from "./egress.js";
import { GENERATION_COMMANDS } from "./generations.js";
import { HOST_COMMANDS } from "./hosts.js";
import { INVITE_COMMANDS } from "./invites.js";
import { METRICS_COMMANDS } from "./metrics.js";
import { RELEASE_COMMANDS } from "./releases.js";
import { SANDBOX_COMMANDS } from "./sandboxes.js";
import { SNAPSHOT_COMMANDS } from "./snapshots.js";
import { STATUS_COMMANDS } from "./status.js";
import { USER_COMMANDS } from "./users.js";

export const COMMANDS: Command[] = [
  ...STATUS_COMMANDS,
  ...SANDBOX_COMMANDS,
  ...USER_COMMANDS,
  ...HOST_COMMANDS,
  ...INVITE_COMMANDS,
  ...GENERATION_COMMANDS,
  ...RELEASE_COMMANDS,
  ...SNAPSHOT_COMMANDS,
  ...AUDIT_COMMANDS,
  ...BACKUP_COMMANDS,
  ...EGRESS_COMMANDS,
  completionCommand(() => COMMANDS),
  ...METRICS_COMMANDS,
];

/** Commands that are groups of subcommands, and the one a bare group name means. */
export const GROUPS: Record<string, { summary: string; default?: string }> = {
  sandboxes: { summary: "list, start, stop and restart sandboxes", default: "list" },
  users: { summary: "add, list, disable, enable and remove users; end their sessions", default: "list" },
  invites: { summary: "create and list invite codes" },
  generations: { summary: "list, add and mark generations", default: "list" },
  hosts: { summary: "list, add, cordon, drain and remove Podman hosts", default: "list" },
  egress: { summary: "egress routes, their usage and log; reload the routes and secrets", default: "routes" },
  snapshots: { summary: "list, create, restore, pin, unpin, delete and export snapshots of a user's data" },
};

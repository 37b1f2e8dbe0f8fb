// The runbook's rules checked on the running box, and whether bubblewrap contains a process there.
import { boxStep, type Context } from "./context.js";
import { run } from "./run.js";

export async function rules(ctx: Context): Promise<void> {
  const report = ctx.report;
  await boxStep(ctx, "systemctl list-timers --all --no-pager");
  const timers = await boxStep(
    ctx,
    "systemctl is-enabled apt-daily.timer apt-daily-upgrade.timer podman-auto-update.timer; systemctl is-active apt-daily.timer apt-daily-upgrade.timer podman-auto-update.timer",
    { allowFail: true },
  );
  const [enabled, active] = [timers.split("\n").slice(0, 3), timers.split("\n").slice(3, 6)];
  if (enabled.some((s) => s !== "masked") || active.some((s) => s === "active")) throw new Error(`update timers: ${timers}`);
  // The token lives on tmpfs: found there (the search works), nowhere on the box's disk.
  const onTmpfs = await boxStep(ctx, `grep -rlF '${ctx.token}' /run/credstore /run/credentials 2>/dev/null; true`);
  if (!onTmpfs.includes("/run/credstore")) throw new Error("the operator token is not in /run/credstore: the search would not find it either");
  const found = run("grep", ["-rlF", "--devices=skip", ctx.token, ctx.box.dir]);
  report.command(
    `grep -rlF <operator token> <the box's whole filesystem on disk>`,
    found.stdout || "(nothing)",
    found.ms,
    found.status === 1 ? 0 : found.status,
  );
  if (found.stdout.trim()) throw new Error(`the operator token is on disk: ${found.stdout}`);
  // Nothing written by hand where the runbook links: every entry a link, every hypervisor one into a release.
  const files = await boxStep(
    ctx,
    "find /etc/systemd/system /run/systemd/system /etc/tmpfiles.d /etc/containers/containers.conf.d /etc/nginx/sites-enabled /usr/local/bin -type f",
    { allowFail: true },
  );
  if (files.trim()) throw new Error(`files written instead of linked:\n${files}`);
  const links = await boxStep(
    ctx,
    'for l in $(find /etc/systemd/system /run/systemd/system /etc/tmpfiles.d /etc/containers/containers.conf.d /etc/nginx/sites-enabled /usr/local/bin -type l | grep -i -e hypervisor -e podman); do printf \'%s -> %s\\n\' "$l" "$(readlink -f "$l")"; done',
    { lines: 40 },
  );
  const outside = links
    .trim()
    .split("\n")
    .filter((l) => l && !l.includes("-> /opt/hypervisor-releases/") && !l.endsWith("-> /dev/null") && !/\.wants\//.test(l.split(" -> ")[0]!));
  if (outside.length) throw new Error(`links not into a release directory:\n${outside.join("\n")}`);
  await boxStep(ctx, "git -C /opt/hypervisor status --short && git -C /opt/hypervisor describe --tags --exact-match");
}

export async function bubblewrap(ctx: Context): Promise<void> {
  const out = await boxStep(
    ctx,
    "bwrap --unshare-all --share-net --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --proc /proc --dev /dev --uid 65534 /usr/bin/id -u",
    { allowFail: true },
  );
  ctx.report.note(out.trim() === "65534" ? "bubblewrap contains a process in the box (as root, outside the unit)." : "bubblewrap does not run in the box.");
  if (out.trim() !== "65534") throw new Error("bubblewrap cannot contain a process in the box");
}

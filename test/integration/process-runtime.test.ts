import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, rmSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { HypervisorError } from "../../hypervisor/errors.js";
import { referenceSandboxCommand } from "../../hypervisor/generations/default-generation.js";
import { waitHealthy } from "../../hypervisor/sandboxes/health-check.js";
import type { SandboxInfo, SandboxSpec } from "../../hypervisor/runtime/container-runtime.js";
import { ProcessRuntime } from "../../hypervisor/runtime/process/process-runtime.js";
import { configVariables } from "../../hypervisor/config.js";
import { DEFAULT_SANDBOX_NETWORK } from "../../hypervisor/runtime/process/netns.js";
import { SANDBOX_UID_BASE, SANDBOX_UID_COUNT } from "../../hypervisor/runtime/process/uids.js";
import { tempDir } from "../helpers/daemon.js";
import { sandboxPids } from "../helpers/proc.js";
import { runId } from "../helpers/run-id.js";
import { runtimeContract } from "./runtime-contract.js";

function environOf(pid: string): Record<string, string> {
  const pairs = readFileSync(`/proc/${pid}/environ`, "latin1").split("\0").filter(Boolean);
  return Object.fromEntries(pairs.map((p) => [p.slice(0, p.indexOf("=")), p.slice(p.indexOf("=") + 1)]));
}

runtimeContract("process", async () => {
  const dir = tempDir();
  const { command, version } = referenceSandboxCommand();
  const runtime = new ProcessRuntime({ recordsDir: join(dir.path, "records"), dataDir: join(dir.path, "data") });
  return {
    runtime,
    // As root: the cgroup freezer (the factory hands it out only where the host allows it).
    ...(runtime.freezer.available ? { freezing: runtime } : {}),
    generation: { id: 1, version, command },
    envOf: async (info) => environOf(info.id),
    pidOf: async (info) => Number(info.id),
    // As root, each sandbox has a network namespace of its own, reached at its own /31 of
    // HYPERVISOR_PROCESS_NETWORK; otherwise it shares the host's, on a loopback port.
    host: process.getuid?.() === 0 ? /^10\.252\.\d+\.\d+$/ : "127.0.0.1",
    // HOST keeps a process sandbox on loopback where it has no network namespace of its own;
    // bubblewrap sets PWD to the data dir it starts the sandbox in.
    runtimeEnv: ["HOST", "PWD"],
    dispose: async () => dir.remove(),
  };
});

describe("process runtime", () => {
  const dir = tempDir();
  const runtime = new ProcessRuntime({ recordsDir: join(dir.path, "records"), dataDir: join(dir.path, "data") });
  const user = `${runId}-stubborn`;
  after(async () => {
    await runtime.remove(user, "a", { removeData: true });
    dir.remove();
  });

  it("kills a sandbox that ignores SIGTERM once the stop timeout passes, leaving no zombie", async () => {
    // A workload that ignores SIGTERM, like a Node PID 1 without a handler.
    const script = "process.on('SIGTERM',()=>{});require('http').createServer((q,s)=>s.end('ok')).listen(+process.env.PORT,process.env.HOST)";
    await runtime.create({
      user,
      slot: "a",
      generation: { id: 7, version: "stubborn", command: [process.execPath, "-e", script] },
      env: {},
      limits: { memoryBytes: 64 * 1024 * 1024, nanoCpus: 1e9, pids: 64 },
    });
    const info = await runtime.start(user, "a");
    // Only once it serves has it installed its SIGTERM handler.
    assert.equal(await waitHealthy(info.endpoint!, Date.now() + 10_000), "healthy");
    const began = Date.now();
    await runtime.stop(user, "a", 600);
    const took = Date.now() - began;
    assert.ok(took >= 550, `stop waited out the timeout before SIGKILL (took ${took} ms)`);
    assert.equal(existsSync(`/proc/${info.id}`), false, "the process is gone and was reaped");
    assert.equal((await runtime.inspect(user, "a"))?.running, false);
  });
});

describe("process runtime logs (DESIGN §8b)", () => {
  const dir = tempDir();
  const records = join(dir.path, "records");
  const runtime = new ProcessRuntime({ recordsDir: records, dataDir: join(dir.path, "data") });
  const user = `${runId}-flood`;
  const logMax = 1024 * 1024;
  after(async () => {
    await runtime.remove(user, "a", { removeData: true });
    dir.remove();
  });

  it("drains a flooding sandbox through a pipe into a log bounded by its limit; ftruncate of its stdout fails; the tail stays at hand", async () => {
    // Floods stdout for 2 s, then prints its last line; /truncate tries ftruncate(1, 4 GiB).
    const script = [
      "const fs=require('fs');",
      "require('http').createServer((q,s)=>{if(q.url==='/truncate'){try{fs.ftruncateSync(1,4*2**30);s.end('truncated')}catch(e){s.end(e.code)}}else s.end('ok')}).listen(+process.env.PORT,process.env.HOST);",
      "const line='x'.repeat(99)+'\\n',end=Date.now()+2000;",
      "(function pump(){while(Date.now()<end){if(!process.stdout.write(line))return process.stdout.once('drain',pump)}console.log('flood over')})();",
    ].join("");
    await runtime.create({
      user,
      slot: "a",
      generation: { id: 9, version: "flood", command: [process.execPath, "-e", script] },
      env: {},
      limits: { memoryBytes: 128 * 1024 * 1024, nanoCpus: 1e9, pids: 64, logBytes: logMax },
    });
    const info = await runtime.start(user, "a");
    assert.equal(await waitHealthy(info.endpoint!, Date.now() + 10_000), "healthy");
    for (const fd of [1, 2]) assert.ok(statSync(`/proc/${info.id}/fd/${fd}`).isFIFO(), `its fd ${fd} is a pipe, not a file the daemon reads`);
    const truncated = await fetch(`http://${info.endpoint!.host}:${info.endpoint!.port}/truncate`).then((r) => r.text());
    assert.equal(truncated, "EINVAL", "a pipe cannot be truncated");
    const log = join(records, `${user}-a`, "sandbox.log");
    const deadline = Date.now() + 20_000;
    let last: string[] = [];
    while (Date.now() < deadline) {
      last = [];
      for await (const line of runtime.logs(user, "a", { tail: 3, follow: false })) last.push(line);
      if (last.at(-1) === "flood over") break;
      await sleep(200);
    }
    assert.equal(last.at(-1), "flood over", `the last lines: ${JSON.stringify(last)}`);
    assert.equal(last.length, 3);
    const sizes = [log, `${log}.1`].map((p) => (existsSync(p) ? statSync(p).size : 0));
    assert.ok(existsSync(`${log}.1`), "past half its bound the log was rotated");
    assert.ok(sizes[0]! + sizes[1]! <= logMax, `log and its older half: ${sizes.join(" + ")} bytes, bound ${logMax}`);
  });
});

describe("process runtime disk (DESIGN §8b)", () => {
  const dir = tempDir();
  const data = join(dir.path, "data");
  const runtime = new ProcessRuntime({ recordsDir: join(dir.path, "records"), dataDir: data, diskCheckMs: 200 });
  const user = `${runId}-disk`;
  const diskBytes = 16 * 1024 * 1024;
  after(async () => {
    await runtime.remove(user, "a", { removeData: true });
    dir.remove();
  });

  /** Until the periodic measure has stopped it. */
  const stopped = async () => {
    const deadline = Date.now() + 15_000;
    // Stopped, and the stop recorded with its reason.
    const done = (i: SandboxInfo | undefined) => i?.running === false && i.overDisk !== undefined;
    while (!done(await runtime.inspect(user, "a")) && Date.now() < deadline) await sleep(100);
    const info = await runtime.inspect(user, "a");
    assert.equal(info?.running, false, "stopped over its disk");
    assert.equal(info?.disk, "measured");
    assert.match(info?.overDisk ?? "", /over its disk .*HYPERVISOR_SANDBOX_DISK/, "why, for its user and the operator");
  };

  it("stops a sandbox that writes past its disk, and refuses its start with the reason until its data is smaller; files count too", async () => {
    // /fill writes 32 MiB into its data; /files makes 5000 empty files (its bound: one per 4 KiB).
    const script = [
      "const fs=require('fs'),p=require('path'),d=process.env.DATA_DIR;",
      "require('http').createServer((q,s)=>{",
      "if(q.url==='/fill'){fs.writeFileSync(p.join(d,'big'),Buffer.alloc(32<<20,1))}",
      "if(q.url==='/files'){fs.mkdirSync(p.join(d,'many'));for(let i=0;i<5000;i++)fs.writeFileSync(p.join(d,'many',String(i)),'')}",
      "s.end('ok')}).listen(+process.env.PORT,process.env.HOST);",
    ].join("");
    await runtime.create({
      user,
      slot: "a",
      generation: { id: 11, version: "disk", command: [process.execPath, "-e", script] },
      env: {},
      limits: { memoryBytes: 512 * 1024 * 1024, nanoCpus: 1e9, pids: 64, diskBytes },
    });
    const write = async (path: string) => {
      const info = await runtime.start(user, "a");
      assert.equal(await waitHealthy(info.endpoint!, Date.now() + 10_000), "healthy");
      // The periodic measure may stop it between its write and its answer: either is a finished write.
      const answer = await fetch(`http://${info.endpoint!.host}:${info.endpoint!.port}${path}`)
        .then((r) => r.text())
        .catch(() => "closed");
      assert.ok(["ok", "closed"].includes(answer), answer);
    };
    const refused = () =>
      assert.rejects(
        runtime.start(user, "a"),
        (err: unknown) => err instanceof HypervisorError && err.code === "conflict" && /HYPERVISOR_SANDBOX_DISK/.test(err.message),
      );

    await write("/fill");
    await stopped();
    await refused();
    // The operator makes its data smaller: it starts again.
    rmSync(join(data, `${user}-a`, "big"));
    await write("/files");
    await stopped();
    await refused();
  });
});

const reference = referenceSandboxCommand();
const specOf = (user: string, slot: "a" | "b"): SandboxSpec => ({
  user,
  slot,
  generation: { id: 1, version: reference.version, command: reference.command },
  env: {},
  limits: { memoryBytes: 256 * 1024 * 1024, nanoCpus: 1e9, pids: 128 },
});

/** The uid a process really runs as, from the host's /proc. */
function uidOf(pid: string): number {
  return Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "latin1"))![1]);
}

describe("process runtime containment (DESIGN §5a)", { skip: process.getuid?.() === 0 ? false : "needs root: per-sandbox uids" }, () => {
  const dir = tempDir();
  const records = join(dir.path, "records");
  const data = join(dir.path, "data");
  const runtime = new ProcessRuntime({ recordsDir: records, dataDir: data });
  const [alice, bob] = [`${runId}-uid-alice`, `${runId}-uid-bob`];
  after(async () => {
    for (const user of [alice, bob]) await runtime.remove(user, "a", { removeData: true });
    dir.remove();
  });

  it("runs each sandbox as a uid of its own, in namespaces of its own, owning only its data dir", async () => {
    const containment = await runtime.prepare();
    const { disk, ...contained } = containment;
    assert.deepEqual({ ...contained, reasons: [] }, { namespaces: true, ownUid: true, loopbackFenced: true, reasons: [] });
    // The temp dir's file system (ext4 on these machines) has no quota the runtime sets.
    assert.equal(disk?.method, "measured");
    // The test's state and data dirs share /tmp's file system: said, and nothing else is missing.
    assert.deepEqual(
      containment.reasons.map((r) => /share a file system without quotas/.test(r)),
      [true],
    );
    const infos = [];
    for (const user of [alice, bob]) {
      await runtime.create(specOf(user, "a"));
      const info = await runtime.start(user, "a");
      assert.equal(await waitHealthy(info.endpoint!, Date.now() + 10_000), "healthy");
      infos.push(info);
    }
    const uids = infos.map((i) => uidOf(i.id));
    assert.notEqual(uids[0], uids[1], "two sandboxes, two uids");
    for (const [i, info] of infos.entries()) {
      const uid = uids[i]!;
      assert.ok(uid > SANDBOX_UID_BASE && uid < SANDBOX_UID_BASE + SANDBOX_UID_COUNT, `uid ${uid} in the sandbox range`);
      for (const ns of ["mnt", "pid", "ipc", "uts"]) {
        assert.notEqual(readlinkSync(`/proc/${info.id}/ns/${ns}`), readlinkSync(`/proc/self/ns/${ns}`), `its own ${ns} namespace`);
      }
      const own = statSync(join(data, `${info.user}-a`));
      assert.deepEqual([own.uid, own.gid, own.mode & 0o777], [uid, uid, 0o700], "its data dir is its own, closed to others");
    }
    const root = statSync(data);
    assert.deepEqual([root.uid, root.mode & 0o777], [0, 0o700], "no sandbox uid may enter the data root");
  });

  it("keeps a sandbox's uid while its data lives, and frees it with the data", async () => {
    const before = uidOf((await runtime.inspect(alice, "a"))!.id);
    await runtime.remove(alice, "a", { removeData: false });
    await runtime.create(specOf(alice, "a"));
    const info = await runtime.start(alice, "a");
    // Healthy: past setpriv(1), which drops to the uid just before the command runs.
    assert.equal(await waitHealthy(info.endpoint!, Date.now() + 10_000), "healthy");
    assert.equal(uidOf(info.id), before, "the same uid owns the data it left");
    await runtime.remove(alice, "a", { removeData: true });
    assert.equal(existsSync(join(records, "uids", String(before))), false, "its claim went with the data");
  });
});

describe("process runtime data from before the data dir moved out of the state dir", () => {
  const dir = tempDir();
  const records = join(dir.path, "records");
  const data = join(dir.path, "data");
  const user = `${runId}-moved`;
  let runtime: ProcessRuntime;
  after(async () => {
    await runtime?.remove(user, "a", { removeData: true });
    dir.remove();
  });

  it("moves it on start, after stopping the sandbox still running from there", async () => {
    const old = join(records, `${user}-a`, "data");
    mkdirSync(old, { recursive: true });
    writeFileSync(join(old, "kept.txt"), "kept");
    // What the runtime before left running: detached, its DATA_DIR in the state dir.
    const leftover = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], { env: { DATA_DIR: old }, detached: true, stdio: "ignore" });
    const exited = new Promise((resolve) => leftover.once("exit", resolve));
    await new Promise((resolve) => leftover.once("spawn", resolve));
    writeFileSync(join(records, `${user}-a`, "sandbox.json"), JSON.stringify({ spec: specOf(user, "a"), pid: leftover.pid, port: 1 }));

    runtime = new ProcessRuntime({ recordsDir: records, dataDir: data });
    await runtime.prepare();
    assert.ok(await Promise.race([exited.then(() => true), sleep(5000, false)]), "the sandbox running from the old place was stopped");
    assert.equal(existsSync(old), false);
    assert.equal(readFileSync(join(data, `${user}-a`, "kept.txt"), "utf8"), "kept");
    const info = await runtime.start(user, "a");
    assert.equal(environOf(info.id).DATA_DIR, join(data, `${user}-a`));
  });
});

/** This runtime's network namespaces, by name: `hvsb-<hash of its records dir>-<user>-<slot>`. */
function namespacesOf(records: string): string[] {
  const prefix = `hvsb-${createHash("sha256").update(records).digest("hex").slice(0, 8)}-`;
  return (existsSync("/run/netns") ? readdirSync("/run/netns") : []).filter((n) => n.startsWith(prefix)).sort();
}

/** The network namespace a process is in, as the kernel names it (`net:[inode]`). */
function netOf(pid: string | number): string {
  return readlinkSync(`/proc/${pid}/ns/net`);
}

describe("process runtime networks (DESIGN §5a)", { skip: process.getuid?.() === 0 ? false : "needs root: network namespaces" }, () => {
  const dir = tempDir();
  const records = join(dir.path, "records");
  const data = join(dir.path, "data");
  const [alice, bob] = [`${runId}-net-alice`, `${runId}-net-bob`];
  let runtime = new ProcessRuntime({ recordsDir: records, dataDir: data });
  after(async () => {
    for (const user of [alice, bob]) await runtime.remove(user, "a", { removeData: true }).catch(() => undefined);
    for (const netns of namespacesOf(records)) execFileSync("ip", ["netns", "delete", netns]);
    dir.remove();
  });

  it("runs each sandbox in a network namespace of its own, on the contract's port at an address only it has", async () => {
    const infos = [];
    for (const user of [alice, bob]) {
      await runtime.create(specOf(user, "a"));
      const info = await runtime.start(user, "a");
      assert.equal(await waitHealthy(info.endpoint!, Date.now() + 10_000), "healthy");
      infos.push(info);
    }
    const [a, b] = infos as [SandboxInfo, SandboxInfo];
    assert.notEqual(netOf(a.id), netOf(process.pid), "not the host's network");
    assert.notEqual(netOf(a.id), netOf(b.id), "not each other's");
    assert.deepEqual([a.endpoint!.port, b.endpoint!.port], [8080, 8080], "the same port, each its own");
    assert.notEqual(a.endpoint!.host, b.endpoint!.host);
    assert.equal(namespacesOf(records).length, 2, "one namespace each, named for this runtime");
    assert.equal(
      configVariables.find((v) => v.name === "HYPERVISOR_PROCESS_NETWORK")!.default,
      DEFAULT_SANDBOX_NETWORK,
      "the runtime's default is the config's",
    );
    for (const info of infos) {
      const who = (await (await fetch(`http://${info.endpoint!.host}:${info.endpoint!.port}/whoami`)).json()) as { user: string };
      assert.equal(who.user, info.user, "each address answers with its own sandbox");
    }
  });

  it("removes a stopped sandbox's namespace and link; after a crash, adopts the running ones' and removes the rest", async () => {
    const bobNet = namespacesOf(records).find((n) => n.endsWith(`${bob}-a`))!;
    const bobLink = (JSON.parse(readFileSync(join(records, `${bob}-a`, "sandbox.json"), "utf8")) as { net: { link: string } }).net.link;
    assert.ok(linkExists(bobLink));
    await runtime.stop(bob, "a", 5000);
    assert.equal(existsSync(`/run/netns/${bobNet}`), false, "its namespace went with it");
    // The kernel tears a namespace down in the background: its link follows within moments.
    const deadline = Date.now() + 5000;
    while (linkExists(bobLink) && Date.now() < deadline) await sleep(50);
    assert.equal(linkExists(bobLink), false, "its link went with it");

    // A crash: alice still runs, bob's namespace is left from a start that never finished, and
    // a new runtime (a restarted daemon) takes over the same directories.
    execFileSync("ip", ["netns", "add", bobNet]);
    const aliceInfo = (await runtime.inspect(alice, "a"))!;
    runtime = new ProcessRuntime({ recordsDir: records, dataDir: data });
    await runtime.prepare();
    assert.deepEqual(namespacesOf(records), [namespacesOf(records).find((n) => n.endsWith(`${alice}-a`))!], "only the running sandbox's is left");
    const adopted = (await runtime.inspect(alice, "a"))!;
    assert.deepEqual([adopted.running, adopted.endpoint], [true, aliceInfo.endpoint]);
    assert.equal(await waitHealthy(adopted.endpoint!, Date.now() + 5000), "healthy", "adopted, still reached at its address");
  });
});

function linkExists(name: string): boolean {
  return existsSync(`/sys/class/net/${name}`);
}

describe("process runtime: each sandbox's freezer group", { skip: process.getuid?.() !== 0 && "the cgroup freezer needs root" }, () => {
  const dir = tempDir();
  const runtime = new ProcessRuntime({ recordsDir: join(dir.path, "records"), dataDir: join(dir.path, "data") });
  const user = `${runId}-frozen`;
  after(async () => {
    await runtime.remove(user, "a", { removeData: true });
    dir.remove();
  });

  it("holds every process of the sandbox from its start, freezes them in the kernel, and goes with the sandbox", async () => {
    const { command, version } = referenceSandboxCommand();
    await runtime.create({
      user,
      slot: "a",
      generation: { id: 1, version, command },
      env: {},
      limits: { memoryBytes: 256 * 1024 ** 2, nanoCpus: 1e9, pids: 64 },
    });
    const info = await runtime.start(user, "a");
    assert.equal(await waitHealthy(info.endpoint!, Date.now() + 20_000), "healthy");
    const group = runtime.freezer.path(`hv-${user}-a`);
    const members = new Set(readFileSync(join(group, "cgroup.procs"), "utf8").split(/\s+/).filter(Boolean).map(Number));
    const pids = sandboxPids([user]);
    assert.ok(pids.length > 0 && pids.includes(Number(info.id)));
    for (const pid of pids) assert.ok(members.has(pid), `sandbox process ${pid} is in ${group}`);
    assert.ok(members.size > pids.length, "bubblewrap and the sandbox's init are in it too");

    await runtime.freeze(user, "a");
    assert.equal(readFileSync(join(group, "freezer.state"), "utf8").trim(), "FROZEN", "the kernel's own state");
    for (const pid of pids) assert.match(readFileSync(`/proc/${pid}/stat`, "latin1"), /^\d+ \(.*\) D /, `process ${pid} sleeps in the freezer`);
    await runtime.thaw(user, "a");
    assert.equal(readFileSync(join(group, "freezer.state"), "utf8").trim(), "THAWED");

    await runtime.freeze(user, "a");
    await runtime.stop(user, "a", 5000);
    assert.deepEqual(sandboxPids([user]), [], "a frozen sandbox's processes all die with its stop");
    assert.equal(existsSync(group), false, "its group is removed");
    await assert.rejects(runtime.freezer.freeze(`hv-${user}-a`), { code: "conflict" }, "a sandbox without a group (an earlier release's) is not frozen");
  });
});

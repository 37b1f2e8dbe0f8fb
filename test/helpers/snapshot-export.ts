import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runId } from "./run-id.js";

/** The operator's export of a snapshot, unpacked by tar into a new directory (the caller removes it). */
export async function exportInto(socketPath: string, path: string): Promise<{ status: number; dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), `hv-${runId}-export-`));
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: "GET" }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        return resolve({ status: res.statusCode ?? 0, dir });
      }
      const tar = spawn("tar", ["-x", "--numeric-owner", "-C", dir, "-f", "-"], { stdio: ["pipe", "ignore", "inherit"] });
      res.pipe(tar.stdin);
      tar.on("close", (code) => (code === 0 ? resolve({ status: 200, dir }) : reject(new Error(`tar exited ${code}`))));
    });
    req.on("error", reject);
    req.end();
  });
}

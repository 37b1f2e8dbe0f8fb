import { after, before } from "node:test";
import { PublicClient } from "./authenticator.js";
import { bootDaemon, type TestDaemon } from "./daemon.js";

/** The origin users see; the daemon listens elsewhere, so every request says it explicitly. */
export const ORIGIN = "http://localhost:8080";

/**
 * One daemon whose users see ORIGIN, shared by the tests of the describe() that calls this: it
 * boots in that suite's first before() hook and closes in an after() hook.
 */
export function daemonForSuite(): { t: () => TestDaemon; client: () => PublicClient } {
  let booted: TestDaemon | undefined;
  const t = () => {
    if (!booted) throw new Error("the suite's daemon is only there inside its tests and hooks");
    return booted;
  };
  before(async () => {
    booted = await bootDaemon({ env: { HYPERVISOR_PUBLIC_ORIGIN: ORIGIN } });
  });
  after(async () => {
    await t().close();
  });
  return { t, client: () => new PublicClient(t().publicUrl, ORIGIN) };
}

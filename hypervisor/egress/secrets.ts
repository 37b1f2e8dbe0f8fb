import { readFileSync } from "node:fs";
import { join } from "node:path";
import { readRoutesFile, type EgressRoute } from "./routes-file.js";

/** Where the routes and their secrets come from; read again on every reload. */
export interface EgressSources {
  /** HYPERVISOR_EGRESS_ROUTES_FILE; unset: no routes. */
  routesFile: string | undefined;
  /** HYPERVISOR_EGRESS_SECRETS_DIR: `egress-<secret>` files; tried before the credentials directory. */
  secretsDir: string | undefined;
  /** systemd's $CREDENTIALS_DIRECTORY (LoadCredential=egress-<secret>:...). */
  credentialsDir: string | undefined;
}

/** A route as the operator API shows it: never the secret's value. */
export interface RouteView {
  name: string;
  upstream: string;
  header: string;
  secret: string;
  secretLoaded: boolean;
  userKeys: boolean;
  rpm: number | null;
  concurrent: number;
  dailyRequests: number | null;
  dailyBytes: number | null;
}

export type ReloadResult = { ok: true; routes: number; missingSecrets: string[] } | { ok: false; error: string };

/** Largest secret file read: provider keys are a few hundred bytes at most. */
const MAX_SECRET_BYTES = 16 * 1024;

interface Snapshot {
  routes: Map<string, EgressRoute>;
  /** Secret name → value, in memory only. */
  secrets: Map<string, string>;
}

/**
 * The routes and their secrets, held in memory only (DESIGN §5b). A reload (SIGHUP, the operator
 * call) reads everything first and swaps it in whole; one that fails keeps the old set and says
 * why. A secret whose file is missing leaves its route in place without a secret: the route
 * answers 503 until it comes (or uses a user's own key).
 */
export class EgressRoutes {
  private current: Snapshot = { routes: new Map(), secrets: new Map() };

  constructor(private readonly sources: EgressSources) {}

  reload(): ReloadResult {
    try {
      const routes = this.sources.routesFile === undefined ? [] : readRoutesFile(this.sources.routesFile);
      const secrets = new Map<string, string>();
      const missing: string[] = [];
      for (const name of new Set(routes.map((r) => r.secret))) {
        const value = this.readSecret(name);
        if (value === undefined) missing.push(name);
        else secrets.set(name, value);
      }
      this.current = { routes: new Map(routes.map((r) => [r.name, r])), secrets };
      return { ok: true, routes: routes.length, missingSecrets: missing };
    } catch (err) {
      return { ok: false, error: (err as Error).message };
    }
  }

  route(name: string): EgressRoute | undefined {
    return this.current.routes.get(name);
  }

  /** The operator's secret for a route; undefined when its file was not there at the last reload. */
  secretOf(route: EgressRoute): string | undefined {
    return this.current.secrets.get(route.secret);
  }

  names(): string[] {
    return [...this.current.routes.keys()];
  }

  views(): RouteView[] {
    return [...this.current.routes.values()].map((r) => ({
      name: r.name,
      upstream: r.upstream.href,
      header: r.header,
      secret: r.secret,
      secretLoaded: this.current.secrets.has(r.secret),
      userKeys: r.userKeys,
      rpm: r.rpm ?? null,
      concurrent: r.concurrent,
      dailyRequests: r.dailyRequests ?? null,
      dailyBytes: r.dailyBytes ?? null,
    }));
  }

  /**
   * `egress-<name>` from the secrets directory, else from the credentials directory. Errors name
   * the file, never its content. A value with a line break would split the header it goes in.
   */
  private readSecret(name: string): string | undefined {
    for (const dir of [this.sources.secretsDir, this.sources.credentialsDir]) {
      if (dir === undefined) continue;
      const path = join(dir, `egress-${name}`);
      let bytes: Buffer;
      try {
        bytes = readFileSync(path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") continue;
        throw new Error(`secret ${path}: cannot be read (${(err as NodeJS.ErrnoException).code ?? "error"})`);
      }
      if (bytes.length > MAX_SECRET_BYTES) throw new Error(`secret ${path}: larger than ${MAX_SECRET_BYTES} bytes`);
      const value = bytes.toString("utf8").replace(/\r?\n$/, "");
      if (value === "") throw new Error(`secret ${path}: empty`);
      if (/[\r\n\0]/.test(value)) throw new Error(`secret ${path}: holds a line break or NUL; one line only`);
      return value;
    }
    return undefined;
  }
}

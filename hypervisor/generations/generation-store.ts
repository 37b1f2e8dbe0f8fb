import type { Db } from "../db/database.js";
import { HypervisorError } from "../errors.js";
import type { GenerationSpec } from "../runtime/container-runtime.js";

export type GenerationState = "candidate" | "known-good" | "bad";

export interface Generation extends GenerationSpec {
  runtime: "podman" | "process" | "fake";
  image: string | undefined;
  state: GenerationState;
  createdAt: number;
  stateChangedAt: number;
}

interface Row {
  id: number;
  runtime: Generation["runtime"];
  image: string | null;
  image_id: string | null;
  command: string | null;
  version: string;
  state: GenerationState;
  created_at: number;
  state_changed_at: number;
}

/**
 * The one refusal for a generation (or a generation's description) that this hypervisor's
 * runtime cannot run: the caller named something that does not fit, whatever the state.
 */
export function wrongRuntime(message: string, details?: Record<string, unknown>): HypervisorError {
  return new HypervisorError("bad_request", message, details);
}

function fromRow(r: Row): Generation {
  return {
    id: r.id,
    runtime: r.runtime,
    image: r.image ?? undefined,
    imageId: r.image_id ?? undefined,
    command: r.command ? (JSON.parse(r.command) as string[]) : undefined,
    version: r.version,
    state: r.state,
    createdAt: r.created_at,
    stateChangedAt: r.state_changed_at,
  };
}

/** Image generations: what ran where, and which are known-good. History is never pruned. */
export class GenerationStore {
  constructor(
    private readonly db: Db,
    private readonly now: () => number = Date.now,
  ) {}

  add(g: { runtime: Generation["runtime"]; image?: string; imageId?: string; command?: string[]; version: string }): Generation {
    const at = this.now();
    const result = this.db
      .prepare(
        "INSERT INTO generations (runtime, image, image_id, command, version, state, created_at, state_changed_at) VALUES (?, ?, ?, ?, ?, 'candidate', ?, ?)",
      )
      .run(g.runtime, g.image ?? null, g.imageId ?? null, g.command ? JSON.stringify(g.command) : null, g.version, at, at);
    return this.get(Number(result.lastInsertRowid))!;
  }

  get(id: number): Generation | undefined {
    const row = this.db.prepare("SELECT * FROM generations WHERE id = ?").get(id) as Row | undefined;
    return row && fromRow(row);
  }

  require(id: number): Generation {
    const g = this.get(id);
    if (!g) throw new HypervisorError("not_found", `no generation ${id} (hypervisorctl generations lists them)`, { generation: id });
    return g;
  }

  list(): Generation[] {
    return (this.db.prepare("SELECT * FROM generations ORDER BY id").all() as Row[]).map(fromRow);
  }

  setState(id: number, state: GenerationState): Generation {
    this.require(id);
    this.db.prepare("UPDATE generations SET state = ?, state_changed_at = ? WHERE id = ?").run(state, this.now(), id);
    return this.get(id)!;
  }
}

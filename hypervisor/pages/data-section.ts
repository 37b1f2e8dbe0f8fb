import type { Role, Slot } from "../../proxy/target.js";
import type { Services } from "../services.js";
import { html, type Html } from "./html.js";

type Snapshot = ReturnType<Services["snapshots"]["list"]>[number];

const REASONS: Record<Snapshot["reason"], string> = {
  manual: "taken by hand",
  "pre-promote": "live's data before a promote",
  "pre-rollback": "live's data before a rollback with data",
  "pre-restore": "the data a restore replaced",
  fork: "live's data copied to dev",
};

/** 1.5 MiB, 12 KiB, 300 B. */
function size(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/** A button whose click the page script confirms (the dialog says what happens to which data), then steps up, then sends. */
const confirmedButton = (o: {
  label: string;
  method: string;
  path: string;
  stepUp: string;
  title: string;
  text: string;
  ok: string;
  id?: string;
  primary?: boolean;
}): Html =>
  html`<button type="button" ${o.primary ? "" : html`class="secondary"`} ${o.id ? html`id="${o.id}"` : ""} data-data-path="${o.path}" data-data-method="${o.method}"
  data-step-up="${o.stepUp}" data-confirm-title="${o.title}" data-confirm-text="${o.text}" data-confirm-ok="${o.ok}">${o.label}</button>`;

/**
 * The account page's "Your data" section (DESIGN §2a): what each role runs, the user's snapshots
 * (when, why, how big) with restore, download and delete, and promote, rollback with data and
 * fork, each explained in the confirmation before it asks for a passkey.
 */
export function dataSection(user: string, snapshots: Snapshot[], slots: Record<Role, { slot: Slot; generation: number }>): Html {
  const u = encodeURIComponent(user);
  const roleOf = (slot: Slot): string => (slots.live.slot === slot ? "live" : "dev");
  const { live, dev } = slots;
  return html`
<section aria-labelledby="data-title" id="data">
  <h2 id="data-title">Your data</h2>
  <p>Live runs generation <strong id="data-live-generation">#${live.generation}</strong> on live's data;
  dev runs generation <strong id="data-dev-generation">#${dev.generation}</strong> on dev's data.</p>
  <div class="row-actions">
    ${confirmedButton({
      id: "data-promote",
      primary: true,
      label: "Promote dev to live",
      method: "POST",
      path: `/_hv/data/${u}/promote`,
      stepUp: "data.promote",
      title: `Promote generation #${dev.generation} to live?`,
      text: `Live will run generation #${dev.generation} on live's own data. Your live data is saved as a snapshot first. If the new generation does not start healthy, live goes back to generation #${live.generation} with that data, and whatever the new generation wrote is kept as a snapshot. Dev's data is not touched.`,
      ok: "Promote",
    })}
    ${confirmedButton({
      id: "data-rollback",
      label: "Roll back live with its data",
      method: "POST",
      path: `/_hv/data/${u}/rollback`,
      stepUp: "data.rollback",
      title: "Roll back live, code and data?",
      text: `Live goes back to the last known-good generation and to the data it had when the release after it was promoted. Everything live holds now (generation #${live.generation}'s data) is kept as a snapshot, so nothing is lost. Dev is not touched.`,
      ok: "Roll back with data",
    })}
    ${confirmedButton({
      id: "data-fork",
      label: "Copy live's data to dev",
      method: "POST",
      path: `/_hv/data/${u}/fork`,
      stepUp: "data.fork",
      title: "Copy live's data to dev?",
      text: `Dev's data becomes a copy of live's, so generation #${dev.generation} can be tried on your real data. Dev's current data is kept as a snapshot first. Live pauses only while its data is copied; live's data is not changed.`,
      ok: "Copy to dev",
    })}
  </div>
  <p id="data-message" class="status" role="status" aria-live="polite"></p>
  <h3 id="snapshots-title">Snapshots</h3>
  ${
    snapshots.length
      ? html`<table id="snapshots" aria-labelledby="snapshots-title">
    <thead><tr><th scope="col">Taken</th><th scope="col">Why</th><th scope="col">Of</th><th scope="col">Generation</th><th scope="col">Size</th><th scope="col">Actions</th></tr></thead>
    <tbody>
    ${snapshots.map(
      (s) => html`<tr data-snapshot="${s.id}">
      <td><time datetime="${s.createdAt}">${s.createdAt.slice(0, 19).replace("T", " ")} UTC</time></td>
      <td>${REASONS[s.reason]}${s.pinned ? " (pinned)" : ""}</td>
      <td>${roleOf(s.slot)}'s data</td>
      <td>#${s.generation}</td>
      <td>${size(s.sizeBytes)}</td>
      <td class="row-actions">
        ${confirmedButton({
          label: "Restore",
          method: "POST",
          path: `/_hv/snapshots/${u}/${s.id}/restore`,
          stepUp: "snapshot.restore",
          title: `Restore this snapshot into ${roleOf(s.slot)}?`,
          text: `The ${roleOf(s.slot)} sandbox will run on the data of ${s.createdAt.slice(0, 19).replace("T", " ")} UTC. The data it has now is kept as a snapshot first. The other sandbox is not touched.`,
          ok: "Restore",
        })}
        <a class="button secondary" href="/_hv/snapshots/${u}/${s.id}/export" download>Download</a>
        ${confirmedButton({
          label: "Delete",
          method: "DELETE",
          path: `/_hv/snapshots/${u}/${s.id}`,
          stepUp: "snapshot.delete",
          title: "Delete this snapshot?",
          text: "Its copy of your data is deleted for good. Your sandboxes' data is not touched.",
          ok: "Delete",
        })}
      </td>
    </tr>`,
    )}
    </tbody>
  </table>`
      : html`<p id="no-snapshots">No snapshots yet. One is taken before every promote, rollback with data and restore.</p>`
  }
</section>`;
}

import path from "node:path";
import Table from "cli-table3";
import { formatBytes, formatRate } from "../units.js";
import { formatAge, formatClock } from "./clock.js";
import type { DatasetStatus, StatusReport } from "./status.js";

/** Size and free space of the cache file system, as `status` measured it just now. */
export interface FsSpace {
  totalBytes: number;
  freeBytes: number;
}

/** Longest STATE text; refusal reasons are cut to it so that a line stays within ~100 columns. */
const MAX_STATE = 40;

/**
 * Borderless, like `kubectl get` or `systemctl list-units`: the output is
 * read in terminals and grepped, and box drawing costs a third of the width.
 */
const PLAIN_CHARS = {
  top: "", "top-mid": "", "top-left": "", "top-right": "",
  bottom: "", "bottom-mid": "", "bottom-left": "", "bottom-right": "",
  left: "", "left-mid": "", mid: "", "mid-mid": "", right: "", "right-mid": "",
  middle: "  ",
};

function truncate(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}

function percent(part: number, whole: number): string {
  if (whole <= 0) return "";
  const p = (100 * part) / whole;
  return p > 0 && p < 1 ? "<1%" : `${Math.round(p)}%`;
}

function plural(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

export function stateText(d: DatasetStatus, reference: number): string {
  let base: string;
  switch (d.state) {
    case "slow":
    case "queued":
    case "cached":
      base = d.state;
      break;
    case "copying":
      base =
        d.copy && d.copy.totalBytes > 0
          ? `copying ${Math.min(100, Math.floor((100 * d.copy.doneBytes) / d.copy.totalBytes))}% at ${formatRate(d.copy.bytesPerSecond)}`
          : "copying";
      break;
    default: {
      const unknown: never = d.state;
      // A newer daemon's state: show it rather than fail.
      base = String(unknown);
    }
  }
  if (!d.pinned) return base;
  return d.pinExpiresAt === undefined ? `${base}, pinned` : `${base}, pinned until ${formatClock(d.pinExpiresAt, reference)}`;
}

/**
 * The report as a table, one row per dataset and per refused image, then a
 * summary: cache use against capacity, the cache file system's free space
 * (`fs` when measured now, else the daemon's figure), bytes served from the
 * cache, notes and problems. Times are shown relative to the report's own
 * time, so the output depends on nothing but its arguments.
 */
/**
 * One line per directory that cannot be believed, for the top of the
 * output: what is wrong, since when, and what the daemon does meanwhile.
 */
export function storageLines(report: StatusReport): string[] {
  const lines: string[] = [];
  for (const c of [report.storage?.datadir, report.storage?.cachedir]) {
    if (!c || c.available || c.reason === "Starting") continue;
    const since = `${formatClock(c.since, report.writtenAt, true)} (${formatAge(report.writtenAt - c.since)})`;
    const last = c.lastGoodScanAt === undefined ? "never read" : `last read at ${formatClock(c.lastGoodScanAt, report.writtenAt, true)}`;
    const doing = c.dir === "datadir" ? "serving what is mounted and cached; nothing unmounted, deleted or copied until it is back" : "nothing in the cache deleted, copied or mounted until it is back";
    lines.push(`${c.dir} ${c.path}: UNAVAILABLE since ${since}: ${c.message} [${c.reason}]; ${last}; ${doing}`);
  }
  return lines;
}

export function renderStatus(report: StatusReport, fs?: FsSpace): string {
  const table = new Table({
    head: ["NAME", "SIZE", "STATE", "SLOW", "CACHE", "SERVED"],
    colAligns: ["left", "right", "left", "right", "right", "right"],
    chars: PLAIN_CHARS,
    // No colours: the output is often piped, and cli-table3 colours headers red by default.
    style: { head: [], border: [], "padding-left": 0, "padding-right": 0 },
  });
  const datasets = [...report.datasets].sort((a, b) => a.name.localeCompare(b.name));
  for (const d of datasets) {
    table.push([
      d.name,
      formatBytes(d.sizeBytes),
      stateText(d, report.writtenAt),
      formatRate(d.slowBytesPerSecond),
      formatRate(d.cacheBytesPerSecond),
      formatBytes(d.cacheBytesRead),
    ]);
  }
  const refused = [...report.refused].sort((a, b) => a.file.localeCompare(b.file));
  for (const r of refused) {
    table.push([path.basename(r.file), "-", truncate(`refused: ${r.reason}`, MAX_STATE), "-", "-", "-"]);
  }

  const trouble = storageLines(report);
  const lines = [...trouble, ...(trouble.length > 0 ? [""] : []), table.toString().replace(/ +$/gm, "")];
  if (datasets.length === 0 && refused.length === 0) lines.push("no datasets");
  lines.push("");

  const { cache } = report;
  const copying = datasets.filter((d) => d.state === "copying").length;
  const queued = datasets.filter((d) => d.state === "queued").length;
  const used = percent(cache.usedBytes, cache.capacityBytes);
  let cacheLine = `cache: ${formatBytes(cache.usedBytes)} of ${formatBytes(cache.capacityBytes)}${used ? ` (${used})` : ""}, ${plural(copying, "copy", "copies")} running`;
  if (queued > 0) cacheLine += `, ${queued} queued`;
  lines.push(cacheLine);
  if (cache.ghostBytes > 0) {
    lines.push(`dropped copies still open by readers: ${formatBytes(cache.ghostBytes)}`);
  }
  const space = fs ?? { totalBytes: cache.fsTotalBytes, freeBytes: cache.fsFreeBytes };
  const free = percent(space.freeBytes, space.totalBytes);
  lines.push(`cache file system (${cache.dir}): ${formatBytes(space.freeBytes)} free of ${formatBytes(space.totalBytes)}${free ? ` (${free})` : ""}`);
  lines.push(`served from the cache: ${formatBytes(report.cacheBytesServed)} since the daemon started`);
  lines.push(
    `daemon: pid ${report.pid}, status of ${formatClock(report.writtenAt, report.writtenAt, true)}, read rates over the last ${formatAge(report.periodSeconds * 1000)}`,
  );

  const notes = datasets.filter((d) => d.note !== undefined && d.note !== "");
  if (notes.length > 0) {
    lines.push("", "notes:");
    for (const d of notes) lines.push(`  ${d.name}: ${d.note ?? ""}`);
  }
  if (refused.some((r) => `refused: ${r.reason}`.length > MAX_STATE)) {
    lines.push("", "refused:");
    for (const r of refused) lines.push(`  ${r.file}: ${r.reason}`);
  }
  if (report.problems.length > 0) {
    lines.push("", "problems:");
    for (const p of report.problems) lines.push(`  ${p}`);
  }
  return `${lines.join("\n")}\n`;
}

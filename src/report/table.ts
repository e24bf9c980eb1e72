import path from "node:path";
import stringWidth from "string-width";
import { formatBytes, formatRate } from "../units.js";
import { formatAge, formatClock } from "./clock.js";
import { printable } from "../lib/text.js";
import type { DatasetStatus, RefusedImage, StatusReport } from "./status.js";

/** Size and free space of the cache file system, as `status` measured it just now. */
export interface FsSpace {
  totalBytes: number;
  freeBytes: number;
}

/** Longest STATE text; refusal reasons are cut to it so that a line stays within ~100 columns. */
const MAX_STATE = 40;

/**
 * Rows as borderless columns two spaces apart, like `kubectl get` or
 * `systemctl list-units`: the output is read in terminals and grepped, and
 * box drawing costs a third of the width. Widths in terminal columns
 * (string-width: a CJK character takes two). Hand-rolled because cli-table3
 * took 9 s for 10,000 rows; this takes milliseconds.
 */
export function columns(rows: readonly (readonly string[])[], right: readonly boolean[]): string[] {
  const widths: number[] = [];
  const measured = rows.map((row) =>
    row.map((cell, i) => {
      // Printable ASCII is one column a character; string-width only for the rest (it costs 50x more).
      const w = /^[\x20-\x7e]*$/.test(cell) ? cell.length : stringWidth(cell);
      widths[i] = Math.max(widths[i] ?? 0, w);
      return w;
    }),
  );
  return rows.map((row, r) =>
    row
      .map((cell, i) => {
        const pad = " ".repeat((widths[i] ?? 0) - (measured[r]?.[i] ?? 0));
        return right[i] ? pad + cell : cell + pad;
      })
      .join("  ")
      .trimEnd(),
  );
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
      // Peer fill: where the bytes come from (the file server, or another node).
      if (d.copy?.from !== undefined) base += d.copy.from === "server" ? " from the file server" : ` from ${printable(d.copy.from)}`;
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
  const device = report.cacheDevice;
  if (device?.reason === "ReadOnly") {
    const since = `${formatClock(device.since, report.writtenAt, true)} (${formatAge(report.writtenAt - device.since)})`;
    lines.push(`cache file system READ-ONLY since ${since}: ${device.message} [ReadOnly]; the cached copies stay served, nothing copied or deleted until it is writable`);
  }
  if (device && !device.up) {
    const since = `${formatClock(device.since, report.writtenAt, true)} (${formatAge(report.writtenAt - device.since)})`;
    lines.push(`cache device FAILING since ${since}: ${device.message} [${device.reason}]; every dataset served from the slow tier, no copy made until it reads again`);
  }
  return lines;
}

/** The rows `status` was asked for (status NAME... --state ...), when not all; said under the table. */
export interface Selection {
  datasets: readonly DatasetStatus[];
  refused: readonly RefusedImage[];
  /** The filters, as the user gave them. */
  filters: string;
}

/**
 * The report as text: the summary (storage trouble, mounting progress, cache
 * use, its file system, bytes served, the daemon), then one row per dataset
 * and per refused image (those selected, if a selection is given), then
 * notes and problems. Times are shown relative to the report's own time, so
 * the output depends on nothing but its arguments.
 */
export function renderStatus(report: StatusReport, fs?: FsSpace, selection?: Selection): string {
  const datasets = [...(selection?.datasets ?? report.datasets)].sort((a, b) => a.name.localeCompare(b.name));
  const refused = [...(selection?.refused ?? report.refused)].sort((a, b) => a.file.localeCompare(b.file));
  const rows: string[][] = [["NAME", "SIZE", "STATE", "SLOW", "CACHE", "SERVED"]];
  for (const d of datasets) {
    rows.push([d.name, formatBytes(d.sizeBytes), stateText(d, report.writtenAt), formatRate(d.slowBytesPerSecond), formatRate(d.cacheBytesPerSecond), formatBytes(d.cacheBytesRead)]);
  }
  // A reason too long for the column is given once, below the table, not cut here and repeated there.
  const long = refused.filter((r) => `refused: ${r.reason}`.length > MAX_STATE);
  for (const r of refused) rows.push([path.basename(r.file), "-", long.includes(r) ? "refused (see below)" : `refused: ${r.reason}`, "-", "-", "-"]);

  // The summary first: with thousands of rows, the table would push it out of sight.
  const lines = storageLines(report);
  if (report.mounting) lines.push(`mounting: ${report.mounting.mounted} of ${report.mounting.total} datasets mounted so far`);
  const { cache } = report;
  const copying = report.datasets.filter((d) => d.state === "copying").length;
  const queued = report.datasets.filter((d) => d.state === "queued").length;
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
  if (report.peers) lines.push(peerLine(report.peers));
  lines.push(
    `daemon: pid ${report.pid}, status of ${formatClock(report.writtenAt, report.writtenAt, true)}, read rates over the last ${formatAge(report.periodSeconds * 1000)}`,
  );
  lines.push("", ...columns(rows, [false, true, false, true, true, true]));
  if (datasets.length === 0 && refused.length === 0) lines.push(selection ? "nothing matches" : "no datasets");
  if (selection) lines.push(`(${datasets.length + refused.length} of ${report.datasets.length + report.refused.length} shown: ${selection.filters})`);

  const notes = datasets.filter((d) => d.note !== undefined && d.note !== "");
  if (notes.length > 0) {
    lines.push("", "notes:");
    for (const d of notes) lines.push(`  ${d.name}: ${d.note ?? ""}`);
  }
  const staged = datasets.filter((d) => d.staged !== undefined);
  if (staged.length > 0) {
    lines.push("", "staged for jobs about to start here:");
    for (const d of staged) lines.push(`  ${d.name}: job ${d.staged?.jobId ?? "?"}, expected at ${formatClock(d.staged?.startAt ?? 0, report.writtenAt, true)} (${d.state})`);
  }
  if (long.length > 0) {
    lines.push("", "refused:");
    for (const r of long) lines.push(`  ${path.basename(r.file)}: ${r.reason}`);
  }
  if (report.problems.length > 0) {
    lines.push("", "problems:");
    for (const p of report.problems) lines.push(`  ${p}`);
  }
  return `${lines.join("\n")}\n`;
}

/** Peer fill in one line: on or why not, the fleet, and where this node's copies came from. */
function peerLine(p: NonNullable<StatusReport["peers"]>): string {
  if (!p.enabled) return `peer fill: off${p.problem ? ` (${printable(p.problem, 400)})` : ""}`;
  const c = p.counters;
  const ignored = Object.values(c.recordsIgnored ?? {}).reduce((a, b) => a + b, 0);
  return `peer fill: on as ${printable(p.node ?? "?")}, ${plural(p.peersLive, "peer", "peers")} seen; filled ${formatBytes(c.fromPeersBytes)} from peers and ${formatBytes(c.fromServerBytes)} from the file server, served ${formatBytes(c.servedBytes)} to peers${p.serving > 0 ? ` (${p.serving} now)` : ""}${c.checksumMismatches > 0 ? `, ${c.checksumMismatches} copies from peers discarded (checksum)` : ""}${(c.checksumConflicts ?? 0) > 0 ? `, ${c.checksumConflicts} images with two different signed checksums` : ""}${ignored > 0 ? `, ${ignored} records ignored (unsigned or out of bounds)` : ""}${p.recordsProblem ? `; records: ${p.recordsProblem}` : ""}`;
}

/**
 * The status report from what a tick knows: pure (reconcile builds it; the
 * act step adds what it got done with afterActing).
 */
import type { Config } from "../config.js";
import type { Snapshot } from "../observe/snapshot.js";
import type { Backoff } from "../plan/backoff.js";
import type { Catalog } from "../plan/catalog.js";
import type { Layer } from "../plan/layers.js";
import type { CopyView } from "../plan/diff.js";
import type { Stats } from "../plan/stats.js";
import type { CacheDeviceCondition } from "../plan/cache-device.js";
import { layerId, type DeadLayer } from "../plan/slow-layers.js";
import type { StagedEntry } from "../slurm/queue.js";
import { STATUS_VERSION, type DatasetState, type DatasetStatus, type StatusReport } from "./status.js";

/** The copy pool's totals since start (TransferPool.counters). */
export type CopyCounters = StatusReport["copies"];

export interface ReportInput {
  config: Pick<Config, "interval" | "period" | "cachedir">;
  snapshot: Snapshot;
  catalog: Catalog;
  pins: ReadonlyMap<string, number | undefined>;
  stacks: ReadonlyMap<string, Layer[]>;
  copies: ReadonlyMap<string, CopyView>;
  counters: CopyCounters;
  stats: Stats;
  backoff: Backoff;
  space: { capacity: number; ghosts: number; usedBytes: number };
  problems: string[];
  storage: NonNullable<StatusReport["storage"]>;
  ticks: number;
  pid: number;
  cacheDevice: CacheDeviceCondition;
  /** Slow layers found dead, by layerId (plan/slow-layers.ts). */
  deadLayers?: ReadonlyMap<string, DeadLayer>;
  /** Slow layers found dead since start. */
  deadLayersFound?: number;
  /** Datasets staged for jobs about to start here (slurm/stager.ts). */
  staged?: readonly StagedEntry[];
}

/** What a dataset's note says of its dead slow layer: attached again now (uncovered), or when its cache layer comes off. */
function deadNote(stack: readonly Layer[] | undefined, deadLayers: ReadonlyMap<string, DeadLayer> | undefined): string | undefined {
  const bottom = stack?.[0];
  const dead = bottom?.dead ? deadLayers?.get(layerId(bottom.entry.majorMinor, bottom.mountId)) : undefined;
  if (!dead) return undefined;
  return stack && stack.length > 1 ? `slow layer beneath the cache is dead (${dead.evidence}); attached again when the cache layer comes off` : `slow layer dead (${dead.evidence}); attached again from datadir`;
}

function stateOf(top: Layer | undefined, copy: CopyView | undefined): DatasetState {
  return top?.tier === "cache" && !top.deleted ? "cached" : copy?.state === "running" ? "copying" : copy ? "queued" : "slow";
}

export function buildReport(input: ReportInput): StatusReport {
  const { snapshot, catalog, pins, stats, config } = input;
  const now = snapshot.now;
  const written = new Map(snapshot.cacheFiles.map((f) => [f.path, f.size]));
  const datasets = [...catalog.datasets.values()].map((d): DatasetStatus => {
    const read = stats.get(d.name);
    const r = stats.rate(d.name);
    const copy = input.copies.get(d.name);
    const status: DatasetStatus = {
      name: d.name,
      imageFile: d.imageFile,
      sizeBytes: d.size,
      state: stateOf(input.stacks.get(d.mountPoint)?.at(-1), copy),
      pinned: pins.has(d.name),
      slowBytesPerSecond: r.slow,
      cacheBytesPerSecond: r.cache,
      slowBytesRead: read?.slow.total ?? 0,
      cacheBytesRead: read?.cache.total ?? 0,
    };
    const stage = input.staged?.find((e) => e.dataset === d.name);
    if (stage) status.staged = { jobId: stage.jobId, startAt: stage.startAt };
    const until = pins.get(d.name);
    if (until !== undefined) status.pinExpiresAt = until;
    if (read && read.slow.total + read.cache.total > 0) status.lastReadAt = read.lastReadAt;
    if (copy?.state === "running" && copy.startedAt !== undefined) {
      const doneBytes = written.get(copy.tmpPath) ?? 0;
      status.copy = { doneBytes, totalBytes: copy.size, startedAt: copy.startedAt, bytesPerSecond: doneBytes / Math.max(0.001, (now - copy.startedAt) / 1000) };
      if (copy.from !== undefined) status.copy.from = copy.from;
    }
    const note = input.cacheDevice.up ? (deadNote(input.stacks.get(d.mountPoint), input.deadLayers) ?? input.backoff.note(d.name, now)) : `served from the slow tier: the cache device is failing (${input.cacheDevice.message})`;
    if (note !== undefined) status.note = note;
    return status;
  });
  return {
    version: STATUS_VERSION,
    pid: input.pid,
    writtenAt: now,
    intervalSeconds: config.interval,
    periodSeconds: config.period,
    datasets,
    refused: catalog.refusals.map((r) => ({ file: r.file, reason: r.reason })),
    cache: {
      dir: config.cachedir,
      usedBytes: input.space.usedBytes,
      capacityBytes: input.space.capacity,
      ghostBytes: input.space.ghosts,
      fsTotalBytes: snapshot.cacheFs.totalBytes,
      fsFreeBytes: snapshot.cacheFs.freeBytes,
    },
    cacheBytesServed: stats.cacheBytesServed,
    copies: { ...input.counters },
    tick: { count: input.ticks, ms: 0 },
    problems: input.problems,
    storage: input.storage,
    cacheDevice: { up: input.cacheDevice.up, reason: input.cacheDevice.reason, message: input.cacheDevice.message, since: input.cacheDevice.since },
    slowLayers: { dead: input.deadLayers?.size ?? 0, foundTotal: input.deadLayersFound ?? 0 },
  };
}

/**
 * What acting changed in the report: copies it started (queued or already
 * running) and the slow mounts still to do (deferred past the tick's
 * deadline, or failed) — a first start's progress.
 */
export function afterActing(report: StatusReport, acted: { copies: ReadonlyMap<string, CopyView>; counters: CopyCounters; usedBytes: number; unmountedSlow: number; backoff: Backoff }): StatusReport {
  const datasets = report.datasets.map((d) => {
    const copy = acted.copies.get(d.name);
    const state = d.state === "cached" ? d.state : stateOf(undefined, copy);
    const note = acted.backoff.note(d.name, report.writtenAt);
    if (state === d.state && note === d.note) return d;
    const out: DatasetStatus = { ...d, state };
    if (note === undefined) delete out.note;
    else out.note = note;
    return out;
  });
  const out: StatusReport = { ...report, datasets, copies: { ...acted.counters }, cache: { ...report.cache, usedBytes: acted.usedBytes } };
  if (acted.unmountedSlow > 0) out.mounting = { mounted: report.datasets.length - acted.unmountedSlow, total: report.datasets.length };
  return out;
}

/** Datasets cached and being copied, as the report says (one definition for the log, the status and systemd). */
export function countStates(report: StatusReport): { cached: number; copying: number } {
  return { cached: report.datasets.filter((d) => d.state === "cached").length, copying: report.datasets.filter((d) => d.state === "copying").length };
}

import type { Capacity, Config, PolicyName } from "../config.js";
import type { Snapshot } from "../observe/snapshot.js";
import { MiB } from "../units.js";
import type { Dataset } from "./catalog.js";
import type { TransferInfo } from "./diff.js";
import { fillSlack, knapsack } from "./knapsack.js";
import { tierOf } from "./layers.js";

/** The original's +1 MiB/s for datasets already cached, so a marginal gain does not cause an eviction. */
export const CACHED_BONUS = MiB;

/**
 * A copy costs its size, read once from the slow tier next to the jobs; an
 * uncached dataset's rate is cut by that cost spread over an hour of the
 * reads it would serve, so it must beat a cached one by more than the copy
 * costs before it evicts it.
 */
export const COPY_AMORTIZE_S = 3600;
/** ...but it keeps at least this share of its rate, so that it still fills room nobody else wants. */
export const UNCACHED_FLOOR = 0.5;
/** A cached dataset, or one being copied, counts its rate 1 + KEEP_FACTOR times: near-equals do not swap back and forth, a copy half done is not thrown away for a marginal gain. */
export const KEEP_FACTOR = 0.25;


export function capacityBytes(capacity: Capacity, cacheFsTotalBytes: number): number {
  return capacity.kind === "bytes" ? capacity.bytes : Math.floor((cacheFsTotalBytes * capacity.percent) / 100);
}

/**
 * Copies that were dropped but are still read through an open file keep
 * their blocks until the loop device lets go: the kernel marks their
 * backing file " (deleted)". Their space is not free yet.
 */
export function ghostBytes(snapshot: Snapshot, config: Config): number {
  let bytes = 0;
  for (const loop of snapshot.loops.values()) {
    if (loop.deleted && tierOf(loop.backingFile, config) === "cache") bytes += loop.sizeBytes;
  }
  return bytes;
}

/**
 * Bytes the cache holds now: every regular file in cachedir (files about to
 * be deleted still hold their blocks this tick), except running copies'
 * temporary files, which are counted at the full size they are growing to.
 */
export function occupiedBytes(snapshot: Snapshot, transfers: ReadonlyMap<string, TransferInfo>): number {
  const temporaries = new Set([...transfers.values()].map((t) => t.tmpPath));
  let bytes = 0;
  for (const f of snapshot.cacheFiles) if (f.type === "file" && !temporaries.has(f.path)) bytes += f.size;
  for (const t of transfers.values()) bytes += t.size;
  return bytes;
}

/**
 * Free bytes of the cache file system that no running copy will take: other
 * programs' files count too, so a copy that cannot fit is not started only
 * to fail with ENOSPC.
 */
export function writableBytes(snapshot: Snapshot, transfers: ReadonlyMap<string, TransferInfo>): number {
  const written = new Map(snapshot.cacheFiles.map((f) => [f.path, f.size]));
  let toWrite = 0;
  for (const t of transfers.values()) toWrite += Math.max(0, t.size - (written.get(t.tmpPath) ?? 0));
  return snapshot.cacheFs.freeBytes - toWrite;
}

/**
 * Which of the chosen datasets may start copying now. A copy starts only into
 * space that is free at this tick: the copies this tick drops are deleted
 * now, but a reader may hold one open (its space then stays taken, see
 * ghostBytes), which only the next tick sees. Starting in the same tick as
 * the eviction could overfill the cache, or copy a dataset only to throw it
 * away a tick later. Candidates are admitted in the order given (hottest
 * first); a candidate that does not fit does not block smaller ones.
 */
export function admitCopies(input: { candidates: readonly Dataset[]; occupiedBytes: number; capacityBytes: number; writableBytes: number }): Set<string> {
  const admitted = new Set<string>();
  let occupied = input.occupiedBytes;
  let writable = input.writableBytes;
  for (const d of input.candidates) {
    if (occupied + d.size > input.capacityBytes || d.size > writable) continue;
    occupied += d.size;
    writable -= d.size;
    admitted.add(d.name);
  }
  return admitted;
}

export interface Budget {
  /** The configured capacity, in bytes. */
  capacity: number;
  /** keep_free, in bytes. */
  keepFree: number;
  /** Space held by dropped copies still open (ghostBytes). */
  ghosts: number;
  /** What the cached copies may take this tick. */
  bytes: number;
}

/**
 * The cache's budget this tick: the capacity, less the space of dropped
 * copies still held open, and never so much that the cache file system's
 * free space would fall below keep_free, other programs' files counted.
 */
export function budget(snapshot: Snapshot, config: Config): Budget {
  const ghosts = ghostBytes(snapshot, config);
  const capacity = capacityBytes(config.capacity, snapshot.cacheFs.totalBytes);
  const keepFree = capacityBytes(config.keepFree, snapshot.cacheFs.totalBytes);
  const bytes = Math.max(0, Math.min(capacity - ghosts, snapshot.cacheFs.freeBytes + cacheFileBytes(snapshot) - keepFree));
  return { capacity, keepFree, ghosts, bytes };
}

/** Bytes of the regular files in cachedir as they are on disk now (partial copies at their current size). */
export function cacheFileBytes(snapshot: Snapshot): number {
  return snapshot.cacheFiles.reduce((sum, f) => sum + (f.type === "file" ? f.size : 0), 0);
}

/**
 * The pinned datasets that fit in the budget, and those that do not. Pins
 * already cached go first (so a new pin never evicts an old one), then by
 * name, so that the outcome does not flap from tick to tick.
 */
export function fitPins(datasets: readonly Dataset[], pinned: ReadonlySet<string>, budgetBytes: number): { fit: Dataset[]; overflow: Dataset[] } {
  const candidates = datasets
    .filter((d) => pinned.has(d.name))
    .sort((a, b) => Number(b.cache === "valid") - Number(a.cache === "valid") || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const fit: Dataset[] = [];
  const overflow: Dataset[] = [];
  let left = budgetBytes;
  for (const d of candidates) {
    if (d.size <= left) {
      fit.push(d);
      left -= d.size;
    } else overflow.push(d);
  }
  return { fit, overflow };
}

export interface PlanInput {
  datasets: Iterable<Dataset>;
  rate: (name: string) => { slow: number; cache: number };
  budgetBytes: number;
  /** Datasets cached first, whatever their rate, and never evicted (if they fit: see fitPins). */
  pinned?: ReadonlySet<string>;
  /** Datasets unread for max_idle: worth nothing, so they are evicted even when they fit. */
  idle?: (name: string) => boolean;
  /** Both tiers over the fast window (Stats.fastRate), bytes/s; without it, slow + cache over the period. */
  fastRate?: (name: string) => number;
  /** Datasets whose copy is queued or running. */
  copying?: ReadonlySet<string>;
  /** Default: adaptive. */
  policy?: PolicyName;
}

type RateInput = Pick<PlanInput, "rate" | "fastRate" | "policy">;

/** Both tiers over the period: the original's rate, and the adaptive policy's without a fast window. */
function periodRate(input: RateInput, name: string): number {
  const r = input.rate(name);
  return r.slow + r.cache;
}

/** The adaptive policy's rate: the fast window's, if there is one. */
function recentRate(input: RateInput, name: string): number {
  return input.fastRate ? input.fastRate(name) : periodRate(input, name);
}

/** The order copies are admitted in, highest first: the value that chose them (the original: its rate). */
export function copyPriority(input: RateInput, d: Dataset): number {
  return input.policy === "original" ? periodRate(input, d.name) : planValue(d, recentRate(input, d.name), false);
}

function itemValue(input: PlanInput, d: Dataset): number {
  if (input.idle?.(d.name)) return 0;
  if (input.policy === "original") return periodRate(input, d.name) + (d.cache === "valid" ? CACHED_BONUS : 0);
  return planValue(d, recentRate(input, d.name), input.copying?.has(d.name) ?? false);
}

/**
 * What caching a dataset is worth this tick, bytes/s: its rate, more if it is
 * cached or being copied (KEEP_FACTOR, CACHED_BONUS), less the amortized copy
 * if it is not (COPY_AMORTIZE_S, UNCACHED_FLOOR).
 */
export function planValue(d: Dataset, rate: number, copying: boolean): number {
  if (d.cache === "valid" || copying) return rate * (1 + KEEP_FACTOR) + CACHED_BONUS;
  return Math.max(rate * UNCACHED_FLOOR, rate - d.size / COPY_AMORTIZE_S);
}

/**
 * Which datasets to cache: the pins that fit, then a 0/1 knapsack over
 * (value, image size) in the room left, then (adaptive) fillSlack. Pure.
 */
export function plan(input: PlanInput): Set<string> {
  const list = [...input.datasets];
  const { fit } = fitPins(list, input.pinned ?? new Set(), input.budgetBytes);
  const chosen = new Set(fit.map((d) => d.name));
  const rest = list.filter((d) => !chosen.has(d.name));
  const room = input.budgetBytes - fit.reduce((sum, d) => sum + d.size, 0);
  const items = rest.map((d) => ({ value: itemValue(input, d), weight: d.size }));
  const picked = knapsack(items, room);
  // The original left the knapsack's rounding slack empty; keeping it so keeps its choices.
  for (const i of input.policy === "original" ? picked : fillSlack(items, room, picked)) chosen.add((rest[i] as Dataset).name);
  return chosen;
}

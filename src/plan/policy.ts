import path from "node:path";
import type { Capacity, Config } from "../config.js";
import type { Snapshot } from "../observe/snapshot.js";
import { MiB } from "../units.js";
import type { Dataset } from "./catalog.js";
import { knapsack } from "./knapsack.js";

/** The original's +1 MiB/s for datasets already cached, so a marginal gain does not cause an eviction. */
export const CACHED_BONUS = MiB;

export interface Desired {
  /** Names of the datasets that should be on the cache tier. */
  cached: Set<string>;
  /** Bytes the cache may hold this tick, after space still held by dropped copies. */
  budgetBytes: number;
  /** Bytes held by cached copies already deleted but kept open by a loop device. */
  ghostBytes: number;
}

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
    if (loop.deleted && path.dirname(loop.backingFile) === config.cachedir) bytes += loop.sizeBytes;
  }
  return bytes;
}

export interface PlanInput {
  datasets: Iterable<Dataset>;
  rate: (name: string) => { slow: number; cache: number };
  budgetBytes: number;
}

/** Which datasets to cache: 0/1 knapsack over (slow + cache throughput, image size). Pure. */
export function plan(input: PlanInput): Set<string> {
  const list = [...input.datasets];
  const items = list.map((d) => {
    const r = input.rate(d.name);
    return { value: r.slow + r.cache + (d.cache === "valid" ? CACHED_BONUS : 0), weight: d.size };
  });
  return new Set(knapsack(items, input.budgetBytes).map((i) => (list[i] as Dataset).name));
}

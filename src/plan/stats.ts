import path from "node:path";
import type { Config } from "../config.js";
import type { Snapshot } from "../observe/snapshot.js";
import { tierOf } from "./layers.js";
import { ThroughputWindow } from "./window.js";

export type Tier = "slow" | "cache";

/**
 * The policy's window is this share of `period` (300 s for the default
 * 1200 s). The period's own window divides by at least half the period, so
 * a job that has just started shows at a fraction of its rate for ten
 * minutes and one that has ended keeps its dataset hot for twenty: in the
 * simulator (BENCHMARKS.md) the quarter window served more from the cache.
 */
export const FAST_WINDOW_SHARE = 0.25;

export interface TierStats {
  /** Bytes read through this tier since the daemon started watching the dataset. */
  totalBytes: number;
  window: ThroughputWindow;
  /** Over period x FAST_WINDOW_SHARE: what the policy reads. */
  fast: ThroughputWindow;
}

export interface DatasetStats {
  slow: TierStats;
  cache: TierStats;
  /** Last time (ms) either tier was read. */
  lastReadAt: number;
}

/**
 * Per-dataset, per-tier read statistics, fed each tick with the loop devices'
 * read counters. Counters are tracked per device, and only their increase
 * between two ticks on the same backing file counts. A device's counter is
 * not reset when it is detached and attached again (it can start at the
 * previous user's total), so a device seen for the first time, re-attached to
 * another file, or whose counter went backwards only sets a new baseline:
 * at most one tick of reads is missed, and no rate is negative or huge.
 */
export class Stats {
  private readonly datasets = new Map<string, DatasetStats>();
  private readonly devices = new Map<string, { backingFile: string; bytes: number }>();
  /** Bytes served from the cache tier since start, including datasets since removed. */
  cacheBytesServed = 0;

  constructor(private periodMs: number) {}

  setPeriod(periodMs: number): void {
    this.periodMs = periodMs;
    for (const d of this.datasets.values()) {
      d.slow.window.periodMs = periodMs;
      d.cache.window.periodMs = periodMs;
      d.slow.fast.periodMs = periodMs * FAST_WINDOW_SHARE;
      d.cache.fast.periodMs = periodMs * FAST_WINDOW_SHARE;
    }
  }

  get(name: string): DatasetStats | undefined {
    return this.datasets.get(name);
  }

  rate(name: string): { slow: number; cache: number } {
    const d = this.datasets.get(name);
    return d ? { slow: d.slow.window.rate(), cache: d.cache.window.rate() } : { slow: 0, cache: 0 };
  }

  /** Both tiers over the fast window, bytes/s: the rate the policy plans with. */
  fastRate(name: string): number {
    const d = this.datasets.get(name);
    return d ? d.slow.fast.rate() + d.cache.fast.rate() : 0;
  }

  /**
   * A device the daemon has just attached: its counter now is the baseline,
   * so reads made before the next tick count (else a job's first seconds on
   * a new mount, or on the cache right after the overmount, would be lost).
   */
  noteAttached(device: string, backingFile: string, bytes: number): void {
    this.devices.set(device, { backingFile, bytes });
  }

  private ensure(name: string, now: number): DatasetStats {
    let d = this.datasets.get(name);
    if (!d) {
      const tier = (): TierStats => ({ totalBytes: 0, window: new ThroughputWindow(this.periodMs), fast: new ThroughputWindow(this.periodMs * FAST_WINDOW_SHARE) });
      d = { slow: tier(), cache: tier(), lastReadAt: now };
      this.datasets.set(name, d);
    }
    return d;
  }

  /** @param nameOfFile image file name -> dataset name (cached copies share the image's file name). */
  update(snapshot: Snapshot, config: Config, nameOfFile: ReadonlyMap<string, string>, live: Iterable<string>): void {
    const now = snapshot.now;
    const deltas = new Map<string, { slow: number; cache: number }>();
    const seenDevices = new Set<string>();
    for (const loop of snapshot.loops.values()) {
      const bytes = snapshot.readBytes.get(loop.name);
      if (bytes === undefined) continue;
      seenDevices.add(loop.name);
      const prev = this.devices.get(loop.name);
      this.devices.set(loop.name, { backingFile: loop.backingFile, bytes });
      const delta = prev && prev.backingFile === loop.backingFile && bytes >= prev.bytes ? bytes - prev.bytes : 0;
      const tier: Tier | undefined = tierOf(loop.backingFile, config);
      if (tier === "cache") this.cacheBytesServed += delta;
      const name = nameOfFile.get(path.basename(loop.backingFile));
      if (!tier || name === undefined || delta === 0) continue;
      const d = deltas.get(name) ?? { slow: 0, cache: 0 };
      d[tier] += delta;
      deltas.set(name, d);
    }
    for (const dev of this.devices.keys()) if (!seenDevices.has(dev)) this.devices.delete(dev);

    const liveNames = new Set(live);
    for (const name of liveNames) {
      const d = this.ensure(name, now);
      const delta = deltas.get(name) ?? { slow: 0, cache: 0 };
      d.slow.totalBytes += delta.slow;
      d.cache.totalBytes += delta.cache;
      if (delta.slow + delta.cache > 0) d.lastReadAt = now;
      d.slow.window.add(now, d.slow.totalBytes);
      d.cache.window.add(now, d.cache.totalBytes);
      d.slow.fast.add(now, d.slow.totalBytes);
      d.cache.fast.add(now, d.cache.totalBytes);
    }
    for (const name of this.datasets.keys()) if (!liveNames.has(name)) this.datasets.delete(name);
  }
}

import path from "node:path";
import type { Config } from "../config.js";
import type { Snapshot } from "../observe/snapshot.js";
import { tierOf } from "./layers.js";
import { TickClock, TierHistory } from "./window.js";

export type Tier = "slow" | "cache";

/**
 * The policy's window is this share of `period` (300 s for the default
 * 1200 s). The period's own window divides by at least half the period, so
 * a job that has just started shows at a fraction of its rate for ten
 * minutes and one that has ended keeps its dataset hot for twenty: in the
 * simulator (BENCHMARKS.md) the quarter window served more from the cache.
 */
export const FAST_WINDOW_SHARE = 0.25;

export interface DatasetStats {
  /** Bytes read through each tier, and when (TierHistory.total: since the daemon started watching the dataset). */
  slow: TierHistory;
  cache: TierHistory;
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
 *
 * Rates are the original's sliding window (window.ts) over `period`, and the
 * policy's over a quarter of it, from one history per tier that records only
 * the ticks at which the tier was read, over one clock of tick times.
 */
export class Stats {
  private readonly datasets = new Map<string, DatasetStats>();
  private readonly devices = new Map<string, { backingFile: string; bytes: number }>();
  private readonly clock = new TickClock();
  /** Bytes served from the cache tier since start, including datasets since removed. */
  cacheBytesServed = 0;
  /** When any dataset was last read (ms): with none within the window, every rate is 0 (the daemon's quiet ticks). */
  lastAnyReadAt = -Infinity;

  constructor(private periodMs: number) {}

  setPeriod(periodMs: number): void {
    this.periodMs = periodMs;
  }

  get(name: string): DatasetStats | undefined {
    return this.datasets.get(name);
  }

  private get now(): number {
    return this.clock.count - 1;
  }

  rate(name: string): { slow: number; cache: number } {
    const d = this.datasets.get(name);
    return d ? { slow: d.slow.rate(this.clock, this.now, this.periodMs), cache: d.cache.rate(this.clock, this.now, this.periodMs) } : { slow: 0, cache: 0 };
  }

  /** Both tiers over the fast window, bytes/s: the rate the policy plans with. */
  fastRate(name: string): number {
    const d = this.datasets.get(name);
    const fast = this.periodMs * FAST_WINDOW_SHARE;
    return d ? d.slow.rate(this.clock, this.now, fast) + d.cache.rate(this.clock, this.now, fast) : 0;
  }

  /**
   * A device the daemon has just attached: its counter now is the baseline,
   * so reads made before the next tick count (else a job's first seconds on
   * a new mount, or on the cache right after the overmount, would be lost).
   */
  noteAttached(device: string, backingFile: string, bytes: number): void {
    this.devices.set(device, { backingFile, bytes });
  }

  /** Forget a dataset's reads (`scratch_manager evict`): it is chosen again only once it is read again. */
  forget(name: string): void {
    this.datasets.delete(name);
  }

  /** @param nameOfFile image file name -> dataset name (cached copies share the image's file name). */
  update(snapshot: Snapshot, config: Config, nameOfFile: ReadonlyMap<string, string>, live: Iterable<string>): void {
    const now = snapshot.now;
    const tick = this.clock.add(now, this.periodMs);
    const deltas = new Map<string, { slow: number; cache: number }>();
    const seenDevices = new Set<string>();
    for (const loop of snapshot.loops.values()) {
      // Not sampled this tick (an idle device, see Observer.readCounters): its baseline stands.
      seenDevices.add(loop.name);
      const bytes = snapshot.readBytes.get(loop.name);
      if (bytes === undefined) continue;
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
    const baseline = this.clock.baseline(tick, this.periodMs);
    for (const name of liveNames) {
      let d = this.datasets.get(name);
      if (!d) {
        d = { slow: new TierHistory(tick), cache: new TierHistory(tick), lastReadAt: now };
        this.datasets.set(name, d);
      }
      const delta = deltas.get(name);
      if (delta) {
        d.slow.add(tick, delta.slow);
        d.cache.add(tick, delta.cache);
        if (delta.slow + delta.cache > 0) {
          d.lastReadAt = now;
          this.lastAnyReadAt = now;
        }
      }
      if (baseline !== undefined) {
        d.slow.trim(baseline);
        d.cache.trim(baseline);
      }
    }
    for (const name of this.datasets.keys()) if (!liveNames.has(name)) this.datasets.delete(name);
  }
}

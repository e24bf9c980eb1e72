/**
 * Read rates over a sliding window, as the original computes them (bytes
 * read since the last sample older than the window, over the elapsed time,
 * but at least half the window), kept as the ticks at which each tier was
 * read over one clock of tick times shared by all datasets. The reference
 * it is checked against is bench/sim/throughput-window.ts.
 */

/**
 * The times of the daemon's ticks, oldest first, as far back as the longest
 * window needs (one tick before its start). Shared by every dataset's
 * TierHistory: a tick's time is stored once, not once per dataset and window.
 */
export class TickClock {
  private times: number[] = [];
  /** Index (over all ticks ever) of times[0]. */
  private first = 0;

  /** Index of the oldest tick kept. */
  get oldest(): number {
    return this.first;
  }

  /** Number of ticks so far; the next tick's index. */
  get count(): number {
    return this.first + this.times.length;
  }

  /** A new tick at time t; returns its index. Keeps the ticks `keepMs` back (and one before). */
  add(t: number, keepMs: number): number {
    this.times.push(t);
    let drop = 0;
    while (drop + 1 < this.times.length && (this.times[drop + 1] as number) < t - keepMs) drop++;
    // Shift rarely: the array is a few hundred numbers, dropped in batches.
    if (drop > 64 || drop * 2 > this.times.length) {
      this.times = this.times.slice(drop);
      this.first += drop;
    }
    return this.count - 1;
  }

  time(index: number): number {
    return this.times[index - this.first] as number;
  }

  /** The newest tick older than `windowMs` before tick `now` (the original's baseline), or undefined. */
  baseline(now: number, windowMs: number): number | undefined {
    const limit = this.time(now) - windowMs;
    // Binary search for the last time < limit.
    let lo = 0;
    let hi = now - this.first;
    if (!((this.times[0] as number) < limit)) return undefined;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if ((this.times[mid] as number) < limit) lo = mid;
      else hi = mid;
    }
    return lo + this.first;
  }
}

/**
 * One tier of one dataset: its cumulative bytes, and the ticks at which
 * they changed. A dataset nobody reads keeps one entry, not one per tick:
 * with 10,000 datasets, four ThroughputWindows each took 108 MB
 * (BENCHMARKS.md). rate() gives what ThroughputWindow gives for the same
 * samples (test/unit/window.test.ts checks it on random traces).
 */
export class TierHistory {
  /** Bytes read through this tier since the history began. */
  total = 0;
  /** Tick indexes at which `totals` starts to hold; the first is where the history begins. */
  private ticks: number[];
  private totals: number[];

  constructor(readonly since: number) {
    this.ticks = [since];
    this.totals = [0];
  }

  /** `delta` more bytes at tick `index`. */
  add(index: number, delta: number): void {
    if (delta <= 0) return;
    this.total += delta;
    if (this.ticks.at(-1) === index) this.totals[this.totals.length - 1] = this.total;
    else {
      this.ticks.push(index);
      this.totals.push(this.total);
    }
  }

  /** Position of the last change at or before tick `index` (binary search; the first is never after it). */
  private at(index: number): number {
    let lo = 0;
    let hi = this.ticks.length;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if ((this.ticks[mid] as number) <= index) lo = mid;
      else hi = mid;
    }
    return lo;
  }

  /** Forget changes before tick `index`, but the one that gives its total; in batches, so that a busy dataset does not copy its arrays every tick. */
  trim(index: number): void {
    const drop = this.at(index);
    if (drop >= 32 || (drop > 0 && drop * 2 >= this.ticks.length)) {
      this.ticks = this.ticks.slice(drop);
      this.totals = this.totals.slice(drop);
    }
  }

  /**
   * Bytes per second over `windowMs` up to tick `now`, as the original: since
   * the last tick before the window (or the history's start), divided by at
   * least half the window.
   */
  rate(clock: TickClock, now: number, windowMs: number): number {
    // Never before the history began, nor before the oldest tick kept (the window grew on a reload).
    const base = Math.max(clock.baseline(now, windowMs) ?? -1, this.since, clock.oldest);
    const seconds = Math.max(clock.time(now) - clock.time(base), windowMs / 2) / 1000;
    return (this.total - (this.totals[this.at(base)] as number)) / seconds;
  }
}

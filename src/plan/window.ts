/**
 * Read throughput over a sliding window, from samples of a cumulative byte
 * counter, as the original computes it: bytes read since the last sample
 * older than the window, divided by the elapsed time, but by at least half
 * the window, so that a dataset seen only briefly is not over-rated.
 *
 * O(1) amortized: add() trims from the front, and after a trim the first
 * sample is the baseline, so rate() does not walk the samples. The daemon
 * calls both for every window of every dataset each tick; walking all 240
 * samples (period 1200 s, interval 5 s) took ~100 ms a tick with 10,000
 * datasets (BENCHMARKS.md).
 */
export class ThroughputWindow {
  /**
   * The samples, oldest first from `head`: the baseline (the last sample
   * before the window), then the samples in it. A ring of two typed arrays
   * rather than an array of objects: 16 bytes a sample instead of about 60,
   * and nothing for the garbage collector, for the ~600 samples each
   * dataset keeps in its four windows (BENCHMARKS.md, section 4).
   */
  private times = new Float64Array(4);
  private counts = new Float64Array(4);
  private head = 0;
  private size = 0;

  /** @param periodMs the window length */
  constructor(public periodMs: number) {}

  private index(k: number): number {
    return (this.head + k) % this.times.length;
  }

  private grow(): void {
    const times = new Float64Array(this.times.length * 2);
    const counts = new Float64Array(this.times.length * 2);
    for (let k = 0; k < this.size; k++) {
      times[k] = this.times[this.index(k)] as number;
      counts[k] = this.counts[this.index(k)] as number;
    }
    this.times = times;
    this.counts = counts;
    this.head = 0;
  }

  add(t: number, cumulativeBytes: number): void {
    if (this.size === this.times.length) this.grow();
    const i = this.index(this.size);
    this.times[i] = t;
    this.counts[i] = cumulativeBytes;
    this.size++;
    // Keep one sample at or before the window start: it is the baseline.
    while (this.size >= 2 && (this.times[this.index(1)] as number) < t - this.periodMs) {
      this.head = this.index(1);
      this.size--;
    }
  }

  /** Bytes per second. */
  rate(): number {
    if (this.size === 0) return 0;
    const last = this.index(this.size - 1);
    const lastT = this.times[last] as number;
    // The first sample, unless periodMs shrank (SIGHUP) since the last add().
    let base = 0;
    while (base + 1 < this.size && (this.times[this.index(base + 1)] as number) < lastT - this.periodMs) base++;
    const first = this.index(base);
    const seconds = Math.max(lastT - (this.times[first] as number), this.periodMs / 2) / 1000;
    return ((this.counts[last] as number) - (this.counts[first] as number)) / seconds;
  }

  /** Bytes read within the window (for "was it read lately"). */
  bytesInWindow(): number {
    if (this.size === 0) return 0;
    return (this.counts[this.index(this.size - 1)] as number) - (this.counts[this.head] as number);
  }
}

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

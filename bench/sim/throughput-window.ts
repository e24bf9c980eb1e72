/*
 * The reference the daemon's read statistics (src/plan/window.ts: TickClock
 * and TierHistory) are checked against, in test/unit/window.test.ts, and the
 * window the simulator's policies keep. It left src/ when the daemon moved
 * to one shared clock of ticks (issue 11).
 */
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

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
  /** Oldest first: the baseline (the last sample before the window), then the samples in it. */
  private samples: { t: number; bytes: number }[] = [];

  /** @param periodMs the window length */
  constructor(public periodMs: number) {}

  add(t: number, cumulativeBytes: number): void {
    this.samples.push({ t, bytes: cumulativeBytes });
    // Keep one sample at or before the window start: it is the baseline.
    while (this.samples.length >= 2 && (this.samples[1] as { t: number }).t < t - this.periodMs) this.samples.shift();
  }

  /** Bytes per second. */
  rate(): number {
    const last = this.samples[this.samples.length - 1];
    if (!last) return 0;
    // The first sample, unless periodMs shrank (SIGHUP) since the last add().
    let base = 0;
    while (base + 1 < this.samples.length && (this.samples[base + 1] as { t: number }).t < last.t - this.periodMs) base++;
    const first = this.samples[base] as { t: number; bytes: number };
    const seconds = Math.max(last.t - first.t, this.periodMs / 2) / 1000;
    return (last.bytes - first.bytes) / seconds;
  }

  /** Bytes read within the window (for "was it read lately"). */
  bytesInWindow(): number {
    const last = this.samples[this.samples.length - 1];
    const first = this.samples[0];
    return last && first ? last.bytes - first.bytes : 0;
  }
}

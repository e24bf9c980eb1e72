/**
 * Read throughput over a sliding window, from samples of a cumulative byte
 * counter, as the original computes it: bytes read since the last sample
 * older than the window, divided by the elapsed time, but by at least half
 * the window, so that a dataset seen only briefly is not over-rated.
 */
export class ThroughputWindow {
  private samples: { t: number; bytes: number }[] = [];

  /** @param periodMs the window length */
  constructor(public periodMs: number) {}

  add(t: number, cumulativeBytes: number): void {
    this.samples.push({ t, bytes: cumulativeBytes });
    // Keep one sample at or before the window start: it is the baseline.
    let firstInWindow = this.samples.findIndex((s) => s.t >= t - this.periodMs);
    if (firstInWindow < 0) firstInWindow = this.samples.length - 1;
    if (firstInWindow > 1) this.samples.splice(0, firstInWindow - 1);
  }

  /** Bytes per second. */
  rate(): number {
    const last = this.samples[this.samples.length - 1];
    const first = this.samples[0];
    if (!last || !first) return 0;
    let base = first;
    for (const s of this.samples) if (s.t < last.t - this.periodMs) base = s;
    const seconds = Math.max(last.t - base.t, this.periodMs / 2) / 1000;
    return (last.bytes - base.bytes) / seconds;
  }

  /** Bytes read within the window (for "was it read lately"). */
  bytesInWindow(): number {
    const last = this.samples[this.samples.length - 1];
    const first = this.samples[0];
    return last && first ? last.bytes - first.bytes : 0;
  }
}

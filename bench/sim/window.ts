import { ThroughputWindow } from "./throughput-window.js";
import { prng } from "../rng.js";

/**
 * The ThroughputWindow this project had before it was made O(1): the same
 * function, walking every sample on each add() and rate() (240 at the
 * default period and interval). Kept as the baseline that the planner
 * benchmark times src/plan/window.ts against, and that checkSameRates()
 * holds it to.
 */
export class LegacyThroughputWindow {
  private samples: { t: number; bytes: number }[] = [];

  constructor(public periodMs: number) {}

  add(t: number, cumulativeBytes: number): void {
    this.samples.push({ t, bytes: cumulativeBytes });
    let firstInWindow = this.samples.findIndex((s) => s.t >= t - this.periodMs);
    if (firstInWindow < 0) firstInWindow = this.samples.length - 1;
    if (firstInWindow > 1) this.samples.splice(0, firstInWindow - 1);
  }

  rate(): number {
    const last = this.samples[this.samples.length - 1];
    const first = this.samples[0];
    if (!last || !first) return 0;
    let base = first;
    for (const s of this.samples) if (s.t < last.t - this.periodMs) base = s;
    const seconds = Math.max(last.t - base.t, this.periodMs / 2) / 1000;
    return (last.bytes - base.bytes) / seconds;
  }

  bytesInWindow(): number {
    const last = this.samples[this.samples.length - 1];
    const first = this.samples[0];
    return last && first ? last.bytes - first.bytes : 0;
  }
}

/**
 * Feeds both windows the same counters (ticks with jitter, bursts, idle
 * spells, a missed tick now and then, and now and then a new period, as
 * SIGHUP's Stats.setPeriod does) and throws at the first rate that differs:
 * the O(1) window in src must be the same function as the one it replaced.
 */
export function checkSameRates(samples: number, seed: number): number {
  const rand = prng(seed);
  const periodMs = 1200 * 1000;
  const slow = new LegacyThroughputWindow(periodMs);
  const fast = new ThroughputWindow(periodMs);
  let t = 0;
  let bytes = 0;
  for (let i = 0; i < samples; i++) {
    t += rand() < 0.02 ? 5000 * (2 + Math.floor(rand() * 400)) : 5000 + Math.floor(rand() * 50);
    if (rand() < 0.6) bytes += Math.floor(rand() * 2 ** 32);
    if (rand() < 0.001) {
      const period = 5000 * (1 + Math.floor(rand() * 720));
      slow.periodMs = period;
      fast.periodMs = period;
      if (slow.rate() !== fast.rate()) throw new Error(`src ThroughputWindow differs from the legacy one after a period change at sample ${i}`);
    }
    slow.add(t, bytes);
    fast.add(t, bytes);
    if (slow.rate() !== fast.rate() || slow.bytesInWindow() !== fast.bytesInWindow()) {
      throw new Error(`src ThroughputWindow differs from the legacy one at sample ${i}: ${fast.rate()} != ${slow.rate()}`);
    }
  }
  return samples;
}

/**
 * (b) Ours: the daemon's plan() and planValue() from src/plan/policy.ts,
 * with the statistics Stats keeps: per tier, the window over `period` and
 * the fast one over a quarter of it (Stats.fastRate).
 *
 * What it changes, and why, from the simulator (BENCHMARKS.md has the figures):
 * 1. The rate comes from a window of period/4 (300 s by default). The
 *    original's window divides by at least half the period, so a job that
 *    has just started shows at a fraction of its rate for 10 minutes, and a
 *    job that has ended keeps its dataset "hot" for 20: both delay the
 *    swap to what is being read now, and jobs here last 10-60 minutes.
 * 2. A dataset not on the cache is worth its rate minus its copy's cost
 *    (its size, read once from the slow tier) spread over an hour, but at
 *    least half its rate: it must beat a cached dataset by more than the
 *    copy costs before it evicts it, yet it still fills room nobody wants.
 * 3. A dataset on the cache, or being copied, counts its rate 1.25 times
 *    plus the original's 1 MiB/s: near-equals do not swap back and forth, and
 *    a copy half done is not cancelled for a marginal gain.
 */
import { decide } from "../../src/plan/decide.js";
import { copyPriority } from "../../src/plan/policy.js";
import { FAST_WINDOW_SHARE } from "../../src/plan/stats.js";
import { ThroughputWindow } from "./throughput-window.js";
import type { Decision, PolicyView, SimPolicy } from "./engine.js";
import { indexOfName } from "./policies.js";

/**
 * Ours in the simulator: the windows Stats keeps, fed the same way, and the
 * daemon's decide() (src/plan/decide.ts) with fastRate and the copies in
 * flight, as Daemon.tick calls it. The engine admits copies into the space
 * it models itself, in the order of the same priority.
 */
export class OursPolicy implements SimPolicy {
  readonly name = "ours";
  private readonly windows: { slow: ThroughputWindow; cache: ThroughputWindow; fastSlow: ThroughputWindow; fastCache: ThroughputWindow }[];

  constructor(datasets: number, periodS: number) {
    const ms = periodS * 1000;
    this.windows = Array.from({ length: datasets }, () => ({
      slow: new ThroughputWindow(ms),
      cache: new ThroughputWindow(ms),
      fastSlow: new ThroughputWindow(ms * FAST_WINDOW_SHARE),
      fastCache: new ThroughputWindow(ms * FAST_WINDOW_SHARE),
    }));
  }

  observe(nowMs: number, index: number, slowBytes: number, cacheBytes: number): void {
    const w = this.windows[index];
    if (!w) return;
    w.slow.add(nowMs, slowBytes);
    w.cache.add(nowMs, cacheBytes);
    w.fastSlow.add(nowMs, slowBytes);
    w.fastCache.add(nowMs, cacheBytes);
  }

  decide(view: PolicyView): Decision {
    const rates = this.windows.map((w) => ({ slow: w.slow.rate(), cache: w.cache.rate(), fast: w.fastSlow.rate() + w.fastCache.rate() }));
    const rate = (name: string) => rates[indexOfName(name)] ?? { slow: 0, cache: 0, fast: 0 };
    const fastRate = (name: string) => rate(name).fast;
    const { cached } = decide({
      datasets: view.datasets,
      pinned: new Set(),
      policy: "adaptive",
      rate,
      fastRate,
      copying: new Set(view.copying.keys()),
      space: { capacity: view.budgetBytes, budget: view.budgetBytes, ghosts: 0, occupied: 0, writable: Infinity },
    });
    // The daemon admits copies by the value that chose them.
    return { cached, priority: (d) => copyPriority({ rate, fastRate, policy: "adaptive" }, d) };
  }
}

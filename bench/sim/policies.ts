import type { Dataset } from "../../src/plan/catalog.js";
import { knapsack } from "../../src/plan/knapsack.js";
import { copyPriority, plan } from "../../src/plan/policy.js";
import { ThroughputWindow } from "./throughput-window.js";
import type { Decision, PolicyView, SimConfig, SimPolicy } from "./engine.js";
import type { Trace } from "./trace.js";

/** Dataset names are d000, d001, ...: the index is in the name, no lookup table needed. */
export const indexOfName = (name: string): number => Number(name.slice(1));

/**
 * (a) The original policy: the same ThroughputWindow per dataset and tier
 * that Stats keeps, fed the same way (every tick, with the cumulative
 * counter), and the daemon's plan() with `policy = original`: the knapsack
 * over slow + cache rate over the period, +1 MiB/s for cached datasets,
 * admitting the hottest first. The knapsack is src's (weights rounded up):
 * the original's flooring would overfill the cache, which the simulated
 * cache could not hold.
 */
export class OriginalPolicy implements SimPolicy {
  readonly name = "original";
  private readonly windows: { slow: ThroughputWindow; cache: ThroughputWindow }[];

  constructor(datasets: number, periodS: number) {
    this.windows = Array.from({ length: datasets }, () => ({ slow: new ThroughputWindow(periodS * 1000), cache: new ThroughputWindow(periodS * 1000) }));
  }

  observe(nowMs: number, index: number, slowBytes: number, cacheBytes: number): void {
    const w = this.windows[index];
    if (!w) return;
    w.slow.add(nowMs, slowBytes);
    w.cache.add(nowMs, cacheBytes);
  }

  decide(view: PolicyView): Decision {
    // rate() walks the window's samples; plan() and the admission order each ask once per dataset per tick.
    const rates = this.windows.map((w) => ({ slow: w.slow.rate(), cache: w.cache.rate() }));
    const rate = (name: string) => rates[indexOfName(name)] ?? { slow: 0, cache: 0 };
    const cached = plan({ datasets: view.datasets, rate, budgetBytes: view.budgetBytes, policy: "original" });
    return { cached, priority: (d: Dataset) => copyPriority({ rate, policy: "original" }, d) };
  }
}

export interface OracleParams {
  /** How far ahead it looks, seconds. */
  horizonS: number;
  /** Whether a copy's own slow-tier reads (its size) count against the bytes it would serve. */
  chargeCopy: boolean;
  /**
   * Instead of the bytes within the horizon, a perfect forecast of each
   * dataset's rate over the horizon fed to ours' plan(): ours with the
   * future in place of its window, so that the oracle is never beaten just
   * for lacking ours' copy cost and hysteresis. chargeCopy is then unused.
   */
  forecast?: boolean;
}

/**
 * (c) An offline oracle: it knows every job of the trace, including the
 * ones not yet arrived and how much each running job still has to read.
 * Each tick it caches, by the same knapsack, the datasets that will be read
 * most within the next `horizonS`, counting for a dataset not yet cached
 * only the reads after its copy could finish, and optionally charging the
 * copy itself. It obeys the same mechanics (copy time, bandwidth, admission
 * into free space, 2 copies at once). It is a clairvoyant heuristic, not a
 * proof of optimality (offline caching with sizes and copy times is
 * NP-hard); the benchmark runs a small grid of its parameters and keeps the
 * best, which an offline policy is free to do.
 */
export class OraclePolicy implements SimPolicy {
  readonly name: string;
  /** Per dataset, its jobs by start time, and the first one not yet started. */
  private readonly future: { start: number; rate: number; bytes: number }[][];
  private readonly next: number[];

  constructor(
    trace: Trace,
    private readonly config: SimConfig,
    private readonly params: OracleParams,
  ) {
    this.name = params.forecast ? `oracle(forecast ${params.horizonS / 60} min)` : `oracle(${params.horizonS / 3600}h${params.chargeCopy ? ",charged" : ""})`;
    this.future = trace.sizes.map(() => []);
    for (const j of trace.jobs) this.future[j.dataset]?.push({ start: j.start, rate: j.rate, bytes: j.bytes });
    this.next = trace.sizes.map(() => 0);
  }

  observe(): void {
    // It needs no statistics: it reads the future.
  }

  /** Bytes dataset i's jobs will read in [from, to] seconds, at their own rates. */
  private readsBetween(i: number, active: readonly { remaining: number; rate: number }[], now: number, from: number, to: number): number {
    if (to <= from) return 0;
    let bytes = 0;
    for (const a of active) bytes += a.rate * Math.max(0, Math.min(to, now + a.remaining / a.rate) - from);
    const jobs = this.future[i] ?? [];
    for (let k = this.next[i] ?? 0; k < jobs.length; k++) {
      const j = jobs[k] as { start: number; rate: number; bytes: number };
      if (j.start >= to) break;
      bytes += j.rate * Math.max(0, Math.min(to, j.start + j.bytes / j.rate) - Math.max(from, j.start));
    }
    return bytes;
  }

  decide(view: PolicyView): Decision {
    const now = view.nowMs / 1000;
    const end = now + this.params.horizonS;
    // Jobs that have arrived (start < now) are in view.active with what they still have to read.
    for (let i = 0; i < this.future.length; i++) {
      const jobs = this.future[i] ?? [];
      let k = this.next[i] ?? 0;
      while (k < jobs.length && (jobs[k]?.start as number) < now) k++;
      this.next[i] = k;
    }
    const activeBy = view.datasets.map(() => [] as { remaining: number; rate: number }[]);
    for (const a of view.active) activeBy[a.dataset]?.push(a);
    if (this.params.forecast) {
      const rates = view.datasets.map((_, i) => this.readsBetween(i, activeBy[i] ?? [], now, now, end) / this.params.horizonS);
      const fastRate = (name: string) => rates[indexOfName(name)] ?? 0;
      const rate = (name: string) => ({ slow: fastRate(name), cache: 0 });
      const cached = plan({ datasets: view.datasets, rate, fastRate, budgetBytes: view.budgetBytes, copying: new Set(view.copying.keys()) });
      return { cached, priority: (d) => copyPriority({ rate, fastRate }, d) };
    }
    // A copy gets about a fair share of the slow tier next to the jobs; half of it is a fair guess of that share.
    const copyRate = this.config.slowBandwidth / 2;
    const values = view.datasets.map((d, i) => {
      const active = activeBy[i] ?? [];
      if (d.cache === "valid") return this.readsBetween(i, active, now, now, end);
      const left = d.size - (view.copying.get(d.name) ?? 0);
      const ready = now + left / copyRate;
      return this.readsBetween(i, active, now, ready, end) - (this.params.chargeCopy ? left : 0);
    });
    const chosen = knapsack(
      view.datasets.map((d, i) => ({ value: Math.max(0, values[i] as number), weight: d.size })),
      view.budgetBytes,
    );
    return { cached: new Set(chosen.map((i) => (view.datasets[i] as Dataset).name)), priority: (d) => values[indexOfName(d.name)] ?? 0 };
  }
}

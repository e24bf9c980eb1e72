/**
 * The ideas tried on the way to "ours", as knobs of one policy, so that the
 * ablation suite can show what each one is worth: ours minus one of its
 * parts, and ours plus an idea that was rejected. ours.ts holds the policy
 * itself, as it would go into src/plan; OURS_AS_VARIANT below is the same
 * policy in this form, and the ablation checks that both give one result.
 */
import type { Dataset } from "../../src/plan/catalog.js";
import { knapsack } from "../../src/plan/knapsack.js";
import { MiB } from "../datasets.js";
import { fillSlack } from "../../src/plan/knapsack.js";
import type { Decision, PolicyView, SimPolicy } from "./engine.js";
import { indexOfName } from "./policies.js";
import { ThroughputWindow } from "./throughput-window.js";

/**
 * Bytes read, decayed exponentially with time constant `tauMs`: a memory of
 * how much a dataset has been read over hours that costs O(1) per tick and
 * per dataset (a sliding window of hours would keep thousands of samples).
 * Fed, like ThroughputWindow, with a cumulative counter.
 */
export class DecayingCounter {
  private value = 0;
  private last?: { t: number; bytes: number };

  constructor(public tauMs: number) {}

  add(t: number, cumulativeBytes: number): void {
    if (this.last) {
      const delta = Math.max(0, cumulativeBytes - this.last.bytes);
      this.value = this.value * Math.exp(-(t - this.last.t) / this.tauMs) + delta;
    }
    this.last = { t, bytes: cumulativeBytes };
  }

  /** Decayed bytes: about what was read over the last tauMs. */
  bytes(): number {
    return this.value;
  }
}

export interface VariantParams {
  /** Window of the rate estimate, seconds (the daemon's is `period`, 1200 s). */
  windowS: number;
  /** A copy's cost (its size) is spread over this many seconds of the rate it would serve. */
  amortizeS: number;
  /** An uncached dataset is worth at least this share of its rate; 1 turns the copy cost off. */
  floorFactor: number;
  /** A cached or copying dataset's rate counts 1 + keepFactor times (hysteresis). */
  keepFactor: number;
  /** Bytes/s added to a cached or copying dataset (the original's +1 MiB/s). */
  keepBonus: number;
  /**
   * Ski rental: a dataset not read at least admitReuse times its size over
   * the last longTauS (DecayingCounter) is on probation and only gets room
   * that the others leave free (a second knapsack). 0 turns it off.
   */
  admitReuse: number;
  /** Weight of the long memory's mean rate (decayed bytes / longTauS) in the predicted rate; 0 turns it off. */
  longWeight: number;
  longTauS: number;
  /**
   * A cached or copying dataset's rate is the larger of the windowS rate and
   * the rate over this longer window (slow to forget, quick to admit); 0
   * turns it off.
   */
  keepWindowS: number;
}

/** Ours, in this form: see ours.ts for why each number. */
export const OURS_AS_VARIANT: VariantParams = {
  windowS: 300,
  amortizeS: 3600,
  floorFactor: 0.5,
  keepFactor: 0.25,
  keepBonus: MiB,
  admitReuse: 0,
  longWeight: 0,
  longTauS: 4 * 3600,
  keepWindowS: 0,
};

interface VariantRates {
  /** Both tiers over windowS, bytes/s. */
  rate: number;
  /** Both tiers, decayed over longTauS. */
  recentBytes: number;
  /** Both tiers over keepWindowS (0 when off). */
  keepRate: number;
}

function predicted(r: VariantRates, p: VariantParams): number {
  return Math.max(r.rate, (p.longWeight * r.recentBytes) / p.longTauS);
}

function variantValue(d: Dataset, r: VariantRates, copying: boolean, p: VariantParams): number {
  const rate = predicted(r, p);
  if (d.cache === "valid" || copying) return Math.max(rate, r.keepRate) * (1 + p.keepFactor) + p.keepBonus;
  return Math.max(p.floorFactor * rate, rate - d.size / p.amortizeS);
}

export function planVariant(datasets: readonly Dataset[], rates: readonly VariantRates[], copying: ReadonlySet<string>, budgetBytes: number, p: VariantParams): Set<string> {
  const values = datasets.map((d, i) => variantValue(d, rates[i] as VariantRates, copying.has(d.name), p));
  const pick = (include: (i: number) => boolean, budget: number) => {
    const items = datasets.map((d, i) => ({ value: include(i) ? (values[i] as number) : 0, weight: d.size }));
    return fillSlack(items, budget, knapsack(items, budget));
  };
  if (p.admitReuse <= 0) return new Set(pick(() => true, budgetBytes).map((i) => (datasets[i] as Dataset).name));
  // First the datasets being read that have proven themselves (cached, copying, or read
  // admitReuse times their size lately); then, in the room they leave, everything else:
  // newcomers on probation, and cached datasets nobody reads any more.
  const first = datasets.map((d, i) => {
    const r = rates[i] as VariantRates;
    const proven = d.cache === "valid" || copying.has(d.name) || r.recentBytes >= p.admitReuse * d.size;
    return proven && predicted(r, p) > 0;
  });
  const firstPick = pick((i) => first[i] === true, budgetBytes);
  const left = budgetBytes - firstPick.reduce((s, i) => s + (datasets[i] as Dataset).size, 0);
  const secondPick = pick((i) => first[i] !== true, left);
  return new Set([...firstPick, ...secondPick].map((i) => (datasets[i] as Dataset).name));
}

export class VariantPolicy implements SimPolicy {
  private readonly stats: { slow: ThroughputWindow; cache: ThroughputWindow; recent: DecayingCounter; keep?: { slow: ThroughputWindow; cache: ThroughputWindow } }[];

  constructor(
    datasets: number,
    private readonly params: VariantParams,
    readonly name: string,
  ) {
    this.stats = Array.from({ length: datasets }, () => ({
      // Per tier, summed, as ours does: one window over both would round differently, and
      // in a run this long one flipped tie changes the whole trajectory.
      slow: new ThroughputWindow(params.windowS * 1000),
      cache: new ThroughputWindow(params.windowS * 1000),
      recent: new DecayingCounter(params.longTauS * 1000),
      keep: params.keepWindowS > 0 ? { slow: new ThroughputWindow(params.keepWindowS * 1000), cache: new ThroughputWindow(params.keepWindowS * 1000) } : undefined,
    }));
  }

  observe(nowMs: number, index: number, slowBytes: number, cacheBytes: number): void {
    const s = this.stats[index];
    if (!s) return;
    s.slow.add(nowMs, slowBytes);
    s.cache.add(nowMs, cacheBytes);
    s.recent.add(nowMs, slowBytes + cacheBytes);
    s.keep?.slow.add(nowMs, slowBytes);
    s.keep?.cache.add(nowMs, cacheBytes);
  }

  decide(view: PolicyView): Decision {
    const rates = this.stats.map((s) => ({ rate: s.slow.rate() + s.cache.rate(), recentBytes: s.recent.bytes(), keepRate: s.keep ? s.keep.slow.rate() + s.keep.cache.rate() : 0 }));
    const copying = new Set(view.copying.keys());
    const cached = planVariant(view.datasets, rates, copying, view.budgetBytes, this.params);
    const zero = { rate: 0, recentBytes: 0, keepRate: 0 };
    return { cached, priority: (d) => variantValue(d, rates[indexOfName(d.name)] ?? zero, false, this.params) };
  }
}

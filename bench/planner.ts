/**
 * Item 4 of issue 6, planner part: how long plan() takes for 1,000 and
 * 10,000 datasets, whether the chosen set ever exceeds the budget, and how
 * much value the 1000-bucket knapsack gives up against an exact solver.
 * The baseline is the original's knapsack, ported as it is (weights floored
 * to 1/1000 of the capacity), run on the same instances.
 */
import { performance } from "node:perf_hooks";
import type { Dataset } from "../src/plan/catalog.js";
import { fillSlack, knapsack, type KnapsackItem } from "../src/plan/knapsack.js";
import { plan } from "../src/plan/policy.js";
import { ThroughputWindow } from "./sim/throughput-window.js";
import { GiB, makeDataset, MiB, TiB } from "./datasets.js";
import { logUniform, prng } from "./rng.js";
import { markdownTable, percentile } from "./stats.js";
import { LegacyThroughputWindow } from "./sim/window.js";

/**
 * The original daemon's knapsack (scratch_manager/daemon.py), ported line
 * for line: weights floored to 1/1000 of the capacity, a full (n+1) x 1001
 * table. Only a baseline: the flooring is the defect that lets the chosen set
 * exceed the capacity.
 */
export function originalKnapsack(items: readonly KnapsackItem[], capacity: number): number[] {
  const n = items.length;
  const B = 1000;
  const weights = items.map((it) => Math.floor((it.weight * B) / capacity));
  const table: Float64Array[] = [new Float64Array(B + 1)];
  const keep: Uint8Array[] = [new Uint8Array(B + 1)];
  for (let i = 1; i <= n; i++) {
    const prev = table[i - 1] as Float64Array;
    const row = new Float64Array(B + 1);
    const k = new Uint8Array(B + 1);
    const wi = weights[i - 1] as number;
    const vi = (items[i - 1] as KnapsackItem).value;
    for (let w = 0; w <= B; w++) {
      if (wi <= w && vi + (prev[w - wi] as number) > (prev[w] as number)) {
        row[w] = vi + (prev[w - wi] as number);
        k[w] = 1;
      } else row[w] = prev[w] as number;
    }
    table.push(row);
    keep.push(k);
  }
  const picks: number[] = [];
  let K = B;
  for (let i = n; i > 0; i--) {
    if ((keep[i] as Uint8Array)[K] === 1) {
      picks.push(i - 1);
      K -= weights[i - 1] as number;
    }
  }
  return picks.sort((a, b) => a - b);
}

/**
 * Exact 0/1 knapsack by depth-first branch and bound (items by value
 * density, Dantzig's fractional bound). Exponential in the worst case, so
 * only for the small instances used to grade the bucketed DP.
 */
export function exactKnapsack(items: readonly KnapsackItem[], capacity: number): { value: number; chosen: number[] } {
  const order = items
    .map((it, i) => ({ ...it, i }))
    .filter((it) => it.value > 0 && it.weight <= capacity)
    .sort((a, b) => b.value / Math.max(b.weight, 1e-9) - a.value / Math.max(a.weight, 1e-9));
  let best = 0;
  let bestSet: number[] = [];
  const current: number[] = [];
  const bound = (k: number, room: number, value: number): number => {
    let v = value;
    for (let j = k; j < order.length; j++) {
      const it = order[j] as { value: number; weight: number };
      if (it.weight <= room) {
        room -= it.weight;
        v += it.value;
      } else return v + (it.value * room) / it.weight;
    }
    return v;
  };
  const visit = (k: number, room: number, value: number): void => {
    if (value > best) {
      best = value;
      bestSet = [...current];
    }
    if (k === order.length || bound(k, room, value) <= best) return;
    const it = order[k] as { value: number; weight: number; i: number };
    if (it.weight <= room) {
      current.push(it.i);
      visit(k + 1, room - it.weight, value + it.value);
      current.pop();
    }
    visit(k + 1, room, value);
  };
  visit(0, capacity, 0);
  return { value: best, chosen: bestSet.sort((a, b) => a - b) };
}

/**
 * The fractional (LP) optimum: items by value density, the last one cut. An
 * upper bound on any 0/1 choice, cheap at any size, so it grades the DP
 * where no exact solver can.
 */
export function lpBound(items: readonly KnapsackItem[], capacity: number): number {
  const order = items.filter((it) => it.value > 0 && it.weight <= capacity).sort((a, b) => b.value / Math.max(b.weight, 1e-9) - a.value / Math.max(a.weight, 1e-9));
  let room = capacity;
  let value = 0;
  for (const it of order) {
    if (it.weight <= room) {
      room -= it.weight;
      value += it.value;
    } else return value + (it.value * room) / it.weight;
  }
  return value;
}

/** Every subset: the referee for exactKnapsack itself, on the smallest cases. */
function bruteForce(items: readonly KnapsackItem[], capacity: number): number {
  let best = 0;
  for (let mask = 0; mask < 1 << items.length; mask++) {
    let w = 0;
    let v = 0;
    for (let i = 0; i < items.length; i++) {
      if (mask & (1 << i)) {
        w += (items[i] as KnapsackItem).weight;
        v += (items[i] as KnapsackItem).value;
      }
    }
    if (w <= capacity && v > best) best = v;
  }
  return best;
}

const sumOf = (items: readonly KnapsackItem[], chosen: readonly number[], key: "value" | "weight"): number =>
  chosen.reduce((s, i) => s + (items[i] as KnapsackItem)[key], 0);

export interface ScaleResult {
  datasets: number;
  active: number;
  runs: number;
  p50Ms: number;
  p95Ms: number;
  maxMs: number;
  /** Chosen bytes over budget, worst of all runs: must stay <= 1. */
  worstFill: number;
  overshoots: number;
  baselineP50Ms: number;
  baselineOvershoots: number;
  /** Worst, over runs, of plan()'s value / the LP bound. */
  worstLpRatio: number;
  /** The same with fillSlack after the DP, and the time fillSlack adds. */
  worstLpRatioFilled: number;
  fillP50Ms: number;
}

/**
 * A node with n datasets, sizes 1 GiB - 2 TiB (log-uniform), a budget of a
 * quarter of the total. `activeShare` of them have a positive rate: only
 * those enter the DP (plan() skips value 0), so 1.0 is the worst case, where
 * every dataset has been read within the window or is cached (+1 MiB/s).
 */
function scaleInstance(n: number, activeShare: number, seed: number): { datasets: Dataset[]; rates: Map<string, { slow: number; cache: number }>; budget: number } {
  const rand = prng(seed);
  const datasets: Dataset[] = [];
  const rates = new Map<string, { slow: number; cache: number }>();
  let total = 0;
  for (let i = 0; i < n; i++) {
    const size = Math.round(logUniform(rand, GiB, 2 * TiB));
    total += size;
    const cached = rand() < 0.2;
    const d = makeDataset(`ds${i}`, size, cached ? "valid" : "none");
    datasets.push(d);
    const active = rand() < activeShare;
    const r = active ? logUniform(rand, 0.1 * MiB, 2048 * MiB) : 0;
    rates.set(d.name, cached ? { slow: 0, cache: r } : { slow: r, cache: 0 });
  }
  return { datasets, rates, budget: Math.floor(total / 4) };
}

export function planScale(n: number, activeShare: number, runs: number, seed: number): ScaleResult {
  const times: number[] = [];
  const baseTimes: number[] = [];
  let worstFill = 0;
  let overshoots = 0;
  let baselineOvershoots = 0;
  let active = 0;
  let worstLpRatio = 1;
  let worstLpRatioFilled = 1;
  const fillTimes: number[] = [];
  for (let r = 0; r < runs; r++) {
    const inst = scaleInstance(n, activeShare, seed + r);
    const zero = { slow: 0, cache: 0 };
    const rate = (name: string) => inst.rates.get(name) ?? zero;
    active = [...inst.rates.values()].filter((x) => x.slow + x.cache > 0).length;
    const t0 = performance.now();
    const chosen = plan({ datasets: inst.datasets, rate, budgetBytes: inst.budget });
    times.push(performance.now() - t0);
    const used = inst.datasets.filter((d) => chosen.has(d.name)).reduce((s, d) => s + d.size, 0);
    worstFill = Math.max(worstFill, used / inst.budget);
    if (used > inst.budget) overshoots++;

    // The original's knapsack, on the same items plan() builds (it gives cached datasets the same bonus).
    const items = inst.datasets.map((d) => {
      const x = rate(d.name);
      return { value: x.slow + x.cache + (d.cache === "valid" ? MiB : 0), weight: d.size };
    });
    const b0 = performance.now();
    const picks = originalKnapsack(items, inst.budget);
    baseTimes.push(performance.now() - b0);
    if (sumOf(items, picks, "weight") > inst.budget) baselineOvershoots++;

    const bound = lpBound(items, inst.budget);
    const chosenIdx = inst.datasets.flatMap((d, i) => (chosen.has(d.name) ? [i] : []));
    worstLpRatio = Math.min(worstLpRatio, sumOf(items, chosenIdx, "value") / bound);
    const f0 = performance.now();
    const filled = fillSlack(items, inst.budget, chosenIdx);
    fillTimes.push(performance.now() - f0);
    if (sumOf(items, filled, "weight") > inst.budget) throw new Error("fillSlack overshoot");
    worstLpRatioFilled = Math.min(worstLpRatioFilled, sumOf(items, filled, "value") / bound);
  }
  return {
    datasets: n,
    active,
    runs,
    p50Ms: percentile(times, 50),
    p95Ms: percentile(times, 95),
    maxMs: percentile(times, 100),
    worstFill,
    overshoots,
    baselineP50Ms: percentile(baseTimes, 50),
    baselineOvershoots,
    worstLpRatio,
    worstLpRatioFilled,
    fillP50Ms: percentile(fillTimes, 50),
  };
}

export interface QualityResult {
  cases: number;
  /** Cases where the DP found the exact optimum (to 1e-9 relative). */
  optimal: number;
  meanRatio: number;
  worstRatio: number;
  overshoots: number;
  baselineOvershoots: number;
  /** Among the baseline's cases that fit the capacity, its worst value ratio. */
  baselineWorstFitRatio: number;
  /** How many cases exactKnapsack was checked against every subset. */
  bruteChecked: number;
  /** src knapsack followed by fillSlack. */
  filledOptimal: number;
  filledMeanRatio: number;
  filledWorstRatio: number;
  filledOvershoots: number;
}

/**
 * Random small instances in the shapes that stress a bucketed DP: many
 * items near 1/1000 of the capacity (rounding up costs most there), items
 * close to the whole capacity, and values proportional to weights (the
 * classic hard, "strongly correlated" knapsack).
 */
function smallInstance(rand: () => number): { items: KnapsackItem[]; capacity: number } {
  const capacity = Math.round(logUniform(rand, 10 * GiB, 10 * TiB));
  const n = 2 + Math.floor(rand() * 23);
  const shape = Math.floor(rand() * 4);
  const items: KnapsackItem[] = [];
  for (let i = 0; i < n; i++) {
    let weight: number;
    if (shape === 0) weight = logUniform(rand, capacity / 2000, capacity);
    else if (shape === 1) weight = capacity * (0.001 + rand() * 0.004);
    else if (shape === 2) weight = capacity * (0.2 + rand() * 0.4);
    else weight = logUniform(rand, capacity / 100, capacity / 2);
    weight = Math.round(weight);
    const value = shape === 3 ? weight / GiB + 10 : logUniform(rand, 0.1 * MiB, 2048 * MiB);
    items.push({ value, weight });
  }
  return { items, capacity };
}

export function planQuality(cases: number, seed: number): QualityResult {
  const rand = prng(seed);
  let optimal = 0;
  let ratioSum = 0;
  let worstRatio = 1;
  let overshoots = 0;
  let baselineOvershoots = 0;
  let baselineWorstFitRatio = 1;
  let bruteChecked = 0;
  let filledOptimal = 0;
  let filledWorstRatio = 1;
  let filledRatioSum = 0;
  let filledOvershoots = 0;
  for (let c = 0; c < cases; c++) {
    const { items, capacity } = smallInstance(rand);
    const exact = exactKnapsack(items, capacity);
    if (items.length <= 16) {
      const brute = bruteForce(items, capacity);
      if (Math.abs(brute - exact.value) > 1e-6 * Math.max(1, brute)) throw new Error(`exact solver wrong on case ${c}: ${exact.value} != ${brute}`);
      bruteChecked++;
    }
    const chosen = knapsack(items, capacity);
    const value = sumOf(items, chosen, "value");
    if (sumOf(items, chosen, "weight") > capacity) overshoots++;
    const ratio = exact.value > 0 ? value / exact.value : 1;
    if (ratio >= 1 - 1e-9) optimal++;
    ratioSum += ratio;
    worstRatio = Math.min(worstRatio, ratio);
    const filled = fillSlack(items, capacity, chosen);
    if (sumOf(items, filled, "weight") > capacity) filledOvershoots++;
    const filledRatio = exact.value > 0 ? sumOf(items, filled, "value") / exact.value : 1;
    if (filledRatio >= 1 - 1e-9) filledOptimal++;
    filledWorstRatio = Math.min(filledWorstRatio, filledRatio);
    filledRatioSum += filledRatio;

    const picks = originalKnapsack(items, capacity);
    if (sumOf(items, picks, "weight") > capacity) baselineOvershoots++;
    else if (exact.value > 0) baselineWorstFitRatio = Math.min(baselineWorstFitRatio, sumOf(items, picks, "value") / exact.value);
  }
  return { cases, optimal, meanRatio: ratioSum / cases, worstRatio, overshoots, baselineOvershoots, baselineWorstFitRatio, bruteChecked, filledOptimal, filledMeanRatio: filledRatioSum / cases, filledWorstRatio, filledOvershoots };
}

/**
 * The statistics' share of a tick: every tick the daemon adds a sample to
 * two windows per dataset (Stats.update) and reads both rates (plan()).
 * Windows are pre-filled to steady state (period 1200 s at interval 5 s:
 * 241 samples), then `ticks` ticks are timed.
 */
export function windowCost(n: number, ticks: number, make: (periodMs: number) => { add(t: number, b: number): void; rate(): number }): number {
  const periodMs = 1200 * 1000;
  const windows = Array.from({ length: 2 * n }, () => make(periodMs));
  const rand = prng(n);
  const bytes = new Float64Array(2 * n);
  let t = 0;
  const tick = () => {
    t += 5000;
    let sink = 0;
    for (let i = 0; i < windows.length; i++) {
      bytes[i] = (bytes[i] as number) + (rand() < 0.1 ? rand() * 2 ** 30 : 0);
      (windows[i] as { add(t: number, b: number): void }).add(t, bytes[i] as number);
    }
    for (const w of windows) sink += w.rate();
    return sink;
  };
  for (let k = 0; k < 260; k++) tick();
  const t0 = performance.now();
  for (let k = 0; k < ticks; k++) tick();
  return (performance.now() - t0) / ticks;
}

const ms = (x: number): string => x.toFixed(2);

export function runPlanner(log: (line: string) => void): void {
  log("## planner: plan() time (src/plan/policy.ts, knapsack with 1000 buckets), budget = 25% of the data");
  log("Baseline: the original's knapsack (daemon.py, ported: floored weights, full table) on the same items.");
  log("");
  // Warm-up, so the first timed run does not pay for the JIT.
  planScale(1000, 1, 3, 999);
  const scale = (
    [
      [1000, 0.1],
      [1000, 1],
      [10000, 0.1],
      [10000, 1],
    ] as const
  ).map(([n, share]) => {
    const r = planScale(n, share, 21, 1000 + n);
    return [
      String(r.datasets),
      String(r.active),
      String(r.runs),
      ms(r.p50Ms),
      ms(r.p95Ms),
      ms(r.maxMs),
      r.worstFill.toFixed(4),
      String(r.overshoots),
      r.worstLpRatio.toFixed(4),
      r.worstLpRatioFilled.toFixed(4),
      ms(r.fillP50Ms),
      ms(r.baselineP50Ms),
      `${r.baselineOvershoots}/${r.runs}`,
    ];
  });
  log(
    markdownTable(
      ["datasets", "with a rate", "runs", "plan() p50 ms", "p95 ms", "max ms", "worst fill of budget", "over budget", "worst value / LP bound", "+ fillSlack: worst value / LP", "fillSlack p50 ms", "original p50 ms", "original over budget"],
      scale,
    ),
  );
  log("");
  log("## planner: knapsack value against an exact solver (branch and bound), 2-24 items");
  const q = planQuality(2000, 42);
  log(`cases: ${q.cases} (the exact solver itself checked against every subset on ${q.bruteChecked} of them)`);
  log("");
  log(
    markdownTable(
      ["solver", "exact optimum reached", "mean value / optimum", "worst value / optimum", "over capacity"],
      [
        ["src knapsack (1000 buckets, weights rounded up)", `${q.optimal}/${q.cases}`, q.meanRatio.toFixed(5), q.worstRatio.toFixed(4), String(q.overshoots)],
        ["src knapsack + fillSlack", `${q.filledOptimal}/${q.cases}`, q.filledMeanRatio.toFixed(5), q.filledWorstRatio.toFixed(4), String(q.filledOvershoots)],
        ["original (weights floored)", "-", "-", `${q.baselineWorstFitRatio.toFixed(4)} (cases within capacity)`, String(q.baselineOvershoots)],
      ],
    ),
  );
  log("");
  log("## planner: statistics per tick (2 windows per dataset: add a sample, read the rate), steady state");
  const windows = [1000, 10000].map((n) => {
    const slow = windowCost(n, n >= 10000 ? 20 : 100, (p) => new LegacyThroughputWindow(p));
    const fast = windowCost(n, n >= 10000 ? 20 : 100, (p) => new ThroughputWindow(p));
    return [String(n), ms(slow), ms(fast)];
  });
  log(markdownTable(["datasets", "legacy O(n) window (bench/sim/window.ts) ms/tick", "src ThroughputWindow, O(1), ms/tick"], windows));
}

/**
 * The simulator's benchmarks, as printed into BENCHMARKS.md:
 * - sim: every trace at 10, 25 and 50% capacity, original vs ours vs oracle,
 *   on seed 4, which played no part in choosing ours (seeds 1-3 did);
 * - seeds: original vs ours on five more unseen seeds (5-9), to show the
 *   differences are not one seed's luck;
 * - ablation: ours without each of its parts, and with the ideas that did
 *   not make it, on seed 4.
 */
import { TiB } from "../datasets.js";
import { markdownTable } from "../stats.js";
import type { SimResult } from "./engine.js";
import { ORACLE_GRID, runTasks, type PolicySpec, type Task } from "./tasks.js";
import { makeTrace, totalSize, TRACE_KINDS, WORKLOAD, type TraceKind, type Workload } from "./trace.js";
import { OURS_AS_VARIANT, type VariantParams } from "./variants.js";
import { checkSameRates } from "./window.js";

export const SHARES = [0.1, 0.25, 0.5] as const;
export const MAIN_SEED = 4;
export const EXTRA_SEEDS = [5, 6, 7, 8, 9] as const;

const fraction = (r: SimResult): number => r.cacheBytes / r.totalBytes;
const pct = (x: number): string => `${(100 * x).toFixed(1)}%`;
const tib = (bytes: number): string => (bytes / TiB).toFixed(2);

function describeTrace(kind: TraceKind, seed: number): string {
  const t = makeTrace(kind, seed);
  const train = t.jobs.filter((j) => j.kind === "train").length;
  const demand = t.jobs.reduce((s, j) => s + j.bytes, 0);
  return `${kind}: ${t.sizes.length} datasets, ${tib(totalSize(t))} TiB; ${train} training jobs${t.jobs.length > train ? ` + ${t.jobs.length - train} scans` : ""}; ${tib(demand)} TiB read`;
}

function resultCells(r: SimResult, original: SimResult, oracle: SimResult): string[] {
  return [
    pct(fraction(r)),
    (fraction(r) / fraction(original)).toFixed(3),
    (fraction(r) / fraction(oracle)).toFixed(3),
    tib(r.copiedBytes),
    `${r.copiesDone} (${r.copiesCancelled})`,
    String(r.evictions),
    r.meanStretch.toFixed(2),
  ];
}

/** One case's original, ours and oracle; the oracle is offline, so it keeps the best of its grid. */
function threePolicies(results: readonly SimResult[], what: string): { original: SimResult; ours: SimResult; oracle: SimResult } {
  const original = results.find((r) => r.policy === "original");
  const ours = results.find((r) => r.policy === "ours");
  const oracles = results.filter((r) => r.policy.startsWith("oracle"));
  if (!original || !ours || oracles.length === 0) throw new Error(`missing results for ${what}`);
  return { original, ours, oracle: oracles.reduce((a, b) => (fraction(b) > fraction(a) ? b : a)) };
}

export async function runSim(log: (line: string) => void): Promise<void> {
  // Ours runs on the O(1) window; it must be the daemon's window in all but speed.
  const checked = checkSameRates(200_000, 7);
  const specs: PolicySpec[] = [{ kind: "original" }, { kind: "ours" }, ...ORACLE_GRID.map((o) => ({ kind: "oracle" as const, ...o }))];
  const tasks: Task[] = TRACE_KINDS.flatMap((trace) => SHARES.flatMap((share) => specs.map((policy) => ({ trace, seed: MAIN_SEED, share, policy }))));
  const results = await runTasks(tasks);

  log(`## sim: policy quality, seed ${MAIN_SEED}, ${WORKLOAD.horizon / 3600} h of arrivals then the drain, slow tier 1 GiB/s`);
  log(`(src ThroughputWindow gave the legacy window's rate on all ${checked} samples checked)`);
  for (const kind of TRACE_KINDS) log(`- ${describeTrace(kind, MAIN_SEED)}`);
  log("");
  const rows: string[][] = [];
  const goals: string[] = [];
  for (const kind of TRACE_KINDS) {
    for (const share of SHARES) {
      const { original, ours, oracle } = threePolicies(
        results.filter((_, i) => tasks[i]?.trace === kind && tasks[i]?.share === share),
        `${kind} at ${share}`,
      );
      for (const r of [original, ours, oracle]) rows.push([kind, pct(share), r.policy, ...resultCells(r, original, oracle)]);
      const gain = fraction(ours) / fraction(original);
      const checks = [
        `>= original ${gain >= 1 ? "yes" : "NO"} (${gain.toFixed(4)})`,
        ...(kind === "steady" ? [] : [`>= 1.3x original ${gain >= 1.3 ? "yes" : "NO"}`]),
        `>= 0.9x oracle ${fraction(ours) >= 0.9 * fraction(oracle) ? "yes" : "NO"} (${(fraction(ours) / fraction(oracle)).toFixed(4)})`,
        `copies <= original ${ours.copiedBytes <= original.copiedBytes ? "yes" : "NO"} (${(ours.copiedBytes / original.copiedBytes).toFixed(4)})`,
      ];
      goals.push(`- ${kind} ${pct(share)}: ${checks.join("; ")}`);
    }
  }
  log(markdownTable(["trace", "capacity", "policy", "from cache", "x original", "x oracle", "copied TiB", "copies (cancelled)", "evictions", "job stretch"], rows));
  log("");
  log("Goals for ours (issue 6, item 5):");
  for (const g of goals) log(g);
}

export async function runSeeds(log: (line: string) => void): Promise<void> {
  const specs: PolicySpec[] = [{ kind: "original" }, { kind: "ours" }];
  const tasks: Task[] = EXTRA_SEEDS.flatMap((seed) => TRACE_KINDS.flatMap((trace) => SHARES.flatMap((share) => specs.map((policy) => ({ trace, seed, share, policy })))));
  const results = await runTasks(tasks);
  log(`## seeds: ours / original on seeds ${EXTRA_SEEDS.join(", ")} (none used while choosing ours)`);
  const rows: string[][] = [];
  for (const kind of TRACE_KINDS) {
    for (const share of SHARES) {
      const ratios: number[] = [];
      const copied: number[] = [];
      let o = 0;
      let u = 0;
      for (const seed of EXTRA_SEEDS) {
        const pick = (p: string) => results.find((r, i) => r.policy === p && tasks[i]?.trace === kind && tasks[i]?.share === share && tasks[i]?.seed === seed);
        const original = pick("original");
        const ours = pick("ours");
        if (!original || !ours) throw new Error(`missing results for ${kind}/${share}/${seed}`);
        ratios.push(fraction(ours) / fraction(original));
        copied.push(ours.copiedBytes / original.copiedBytes);
        o += fraction(original) / EXTRA_SEEDS.length;
        u += fraction(ours) / EXTRA_SEEDS.length;
      }
      const mean = ratios.reduce((a, b) => a + b, 0) / ratios.length;
      rows.push([kind, pct(share), pct(o), pct(u), Math.min(...ratios).toFixed(3), mean.toFixed(3), Math.max(...ratios).toFixed(3), Math.min(...copied).toFixed(3), Math.max(...copied).toFixed(3)]);
    }
  }
  log(markdownTable(["trace", "capacity", "from cache, original (mean)", "from cache, ours (mean)", "ratio min", "ratio mean", "ratio max", "copied ratio min", "copied ratio max"], rows));
}

/** Ours without one of its parts, or with an idea that did not make it. */
export const ABLATION: readonly { label: string; params: VariantParams }[] = [
  { label: "ours (as variant)", params: OURS_AS_VARIANT },
  { label: "- fast window (1200 s)", params: { ...OURS_AS_VARIANT, windowS: 1200 } },
  { label: "- copy cost", params: { ...OURS_AS_VARIANT, floorFactor: 1 } },
  { label: "- hysteresis", params: { ...OURS_AS_VARIANT, keepFactor: 0 } },
  { label: "+ ski-rental admission", params: { ...OURS_AS_VARIANT, admitReuse: 1, longTauS: 3600 } },
  { label: "+ 4 h memory", params: { ...OURS_AS_VARIANT, longWeight: 1 } },
];

export async function runAblation(log: (line: string) => void): Promise<void> {
  const shares = [0.1, 0.25] as const;
  const specs: PolicySpec[] = [{ kind: "original" }, { kind: "ours" }, ...ABLATION.map((a) => ({ kind: "variant" as const, ...a }))];
  const tasks: Task[] = TRACE_KINDS.flatMap((trace) => shares.flatMap((share) => specs.map((policy) => ({ trace, seed: MAIN_SEED, share, policy }))));
  const results = await runTasks(tasks);
  log(`## ablation: seed ${MAIN_SEED}; from cache (copied TiB)`);
  const columns = TRACE_KINDS.flatMap((k) => shares.map((s) => ({ kind: k, share: s })));
  const rows = specs.map((spec) => {
    const label = spec.kind === "variant" ? spec.label : spec.kind;
    const cells = columns.map((c) => {
      const r = results.find((x, i) => tasks[i]?.trace === c.kind && tasks[i]?.share === c.share && tasks[i]?.policy === spec);
      if (!r) throw new Error(`missing ablation result ${label}`);
      return `${pct(fraction(r))} (${tib(r.copiedBytes)})`;
    });
    return [label, ...cells];
  });
  log(markdownTable(["policy", ...columns.map((c) => `${c.kind} ${pct(c.share)}`)], rows));
}

/** Candidates compared by `tune`, on the tuning seeds only. */
export const TUNING_SEEDS = [1, 2, 3] as const;
export const CANDIDATES: readonly { label: string; params: VariantParams }[] = [
  { label: "ours (window 300 s)", params: OURS_AS_VARIANT },
  { label: "incumbents kept by the max of 300 s and 1200 s windows", params: { ...OURS_AS_VARIANT, keepWindowS: 1200 } },
  { label: "... and 600 s", params: { ...OURS_AS_VARIANT, keepWindowS: 600 } },
  { label: "ski rental", params: { ...OURS_AS_VARIANT, admitReuse: 1, longTauS: 3600 } },
  { label: "window 150 s", params: { ...OURS_AS_VARIANT, windowS: 150 } },
  { label: "window 75 s", params: { ...OURS_AS_VARIANT, windowS: 75 } },
  { label: "window 30 s", params: { ...OURS_AS_VARIANT, windowS: 30 } },
  { label: "window 30 s, incumbents kept by 300 s", params: { ...OURS_AS_VARIANT, windowS: 30, keepWindowS: 300 } },
];

/** Rejected in the first round (BENCHMARKS.md, "How ours was chosen"). */
export const REJECTED_CANDIDATES: readonly { label: string; params: VariantParams }[] = [
  { label: "keep by 1200 s", params: { ...OURS_AS_VARIANT, keepWindowS: 1200 } },
  { label: "keep by 600 s", params: { ...OURS_AS_VARIANT, keepWindowS: 600 } },
  { label: "keep by 1200 s, keepFactor 0.1", params: { ...OURS_AS_VARIANT, keepWindowS: 1200, keepFactor: 0.1 } },
  { label: "ski rental", params: { ...OURS_AS_VARIANT, admitReuse: 1, longTauS: 3600 } },
  { label: "ski rental + keep by 1200 s", params: { ...OURS_AS_VARIANT, admitReuse: 1, longTauS: 3600, keepWindowS: 1200 } },
];

/** More copy-averse settings of ours' constants, compared by `tune-copy` at every capacity. */
export const COPY_CANDIDATES: readonly { label: string; params: VariantParams }[] = [
  { label: "ours (copy spread over 3600 s, floor 0.5)", params: OURS_AS_VARIANT },
  { label: "copy spread over 1800 s", params: { ...OURS_AS_VARIANT, amortizeS: 1800 } },
  { label: "floor 0.25", params: { ...OURS_AS_VARIANT, floorFactor: 0.25 } },
  { label: "copy spread over 1800 s, floor 0.25", params: { ...OURS_AS_VARIANT, amortizeS: 1800, floorFactor: 0.25 } },
];

/**
 * How candidates were compared before one went into src: on seeds 1-3
 * only, each cell the mean over the seeds of candidate / original from
 * cache, and in parentheses the worst seed, then the mean copied ratio.
 */
export async function runTune(log: (line: string) => void, shares: readonly number[] = SHARES, candidates = CANDIDATES): Promise<void> {
  const specs: PolicySpec[] = [{ kind: "original" }, ...candidates.map((c) => ({ kind: "variant" as const, ...c }))];
  const tasks: Task[] = TUNING_SEEDS.flatMap((seed) => TRACE_KINDS.flatMap((trace) => shares.flatMap((share) => specs.map((policy) => ({ trace, seed, share, policy })))));
  const results = await runTasks(tasks);
  const columns = TRACE_KINDS.flatMap((k) => shares.map((s) => ({ kind: k, share: s })));
  log(`## tune: seeds ${TUNING_SEEDS.join(", ")}; candidate / original from cache: mean (worst seed), copied ratio mean`);
  const find = (spec: PolicySpec, kind: TraceKind, share: number, seed: number) => {
    const r = results.find((_, i) => tasks[i]?.policy === spec && tasks[i]?.trace === kind && tasks[i]?.share === share && tasks[i]?.seed === seed);
    if (!r) throw new Error("missing tune result");
    return r;
  };
  const rows = specs.slice(1).map((spec) => {
    const cells = columns.map((c) => {
      const pairs = TUNING_SEEDS.map((seed) => ({ mine: find(spec, c.kind, c.share, seed), base: find(specs[0] as PolicySpec, c.kind, c.share, seed) }));
      const ratios = pairs.map((p) => fraction(p.mine) / fraction(p.base));
      const copied = pairs.map((p) => p.mine.copiedBytes / p.base.copiedBytes);
      const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
      return `${mean(ratios).toFixed(3)} (${Math.min(...ratios).toFixed(3)}), ${mean(copied).toFixed(2)}`;
    });
    return [spec.kind === "variant" ? spec.label : spec.kind, ...cells];
  });
  log(markdownTable(["candidate", ...columns.map((c) => `${c.kind} ${pct(c.share)}`)], rows));
}

/**
 * Harsher workloads than the three of `sim`, declared before they were run,
 * to see how the ratios move where the original should do worst: popularity
 * that shifts every 30 minutes, five times as many scans, and jobs that
 * read their dataset only 1-2 times.
 */
export const STRESS: readonly { label: string; trace: TraceKind; workload: Partial<Workload> }[] = [
  { label: "shifting every 30 min", trace: "shifting", workload: { shiftEvery: 1800 } },
  { label: "scan every 2 min", trace: "scan", workload: { scanInterarrival: 120 } },
  { label: "1-2 epochs", trace: "steady", workload: { minEpochs: 1, maxEpochs: 2 } },
];

export async function runStress(log: (line: string) => void): Promise<void> {
  const shares = [0.1, 0.25] as const;
  const specs: PolicySpec[] = [{ kind: "original" }, { kind: "ours" }, ...ORACLE_GRID.map((o) => ({ kind: "oracle" as const, ...o }))];
  const tasks: Task[] = STRESS.flatMap((w) => shares.flatMap((share) => specs.map((policy) => ({ trace: w.trace, workload: w.workload, seed: MAIN_SEED, share, policy }))));
  const results = await runTasks(tasks);
  log(`## stress: seed ${MAIN_SEED}, harsher workloads`);
  const rows: string[][] = [];
  for (const w of STRESS) {
    for (const share of shares) {
      const { original, ours, oracle } = threePolicies(
        results.filter((_, i) => tasks[i]?.workload === w.workload && tasks[i]?.share === share),
        `${w.label} at ${share}`,
      );
      rows.push([
        w.label,
        pct(share),
        pct(fraction(original)),
        pct(fraction(ours)),
        `${pct(fraction(oracle))} ${oracle.policy}`,
        (fraction(ours) / fraction(original)).toFixed(3),
        (fraction(ours) / fraction(oracle)).toFixed(3),
        `${tib(original.copiedBytes)} / ${tib(ours.copiedBytes)}`,
      ]);
    }
  }
  log(markdownTable(["workload", "capacity", "original", "ours", "oracle", "ours / original", "ours / oracle", "copied TiB, original / ours"], rows));
}

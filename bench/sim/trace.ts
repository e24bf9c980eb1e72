/**
 * Synthetic workloads for the policy simulator: jobs that each read one
 * dataset at a rate until they have read a given number of bytes. Training
 * jobs re-read their dataset many times (epochs); scans read a dataset once.
 * Every figure is drawn from a seeded PRNG, so a trace is a pure function of
 * (kind, seed).
 */
import { GiB, MiB } from "../datasets.js";
import { exponential, logUniform, prng, shuffle, zipf } from "../rng.js";

export interface SimJob {
  dataset: number;
  /** Seconds from the start of the trace. */
  start: number;
  /** Bytes per second the job reads when the storage keeps up. */
  rate: number;
  /** Bytes it reads in all; a job slowed by the slow tier takes longer, it does not read less. */
  bytes: number;
  kind: "train" | "scan";
}

export interface Trace {
  name: TraceKind;
  seed: number;
  /** Image sizes, by dataset index. */
  sizes: number[];
  /** By start time. */
  jobs: SimJob[];
  /** Seconds during which jobs arrive; the simulation then runs until they finish. */
  horizon: number;
}

export type TraceKind = "steady" | "shifting" | "scan";
export const TRACE_KINDS: readonly TraceKind[] = ["steady", "shifting", "scan"];

/**
 * The workload's shape, fixed before any policy was tuned against it. One
 * node: 100 datasets of 8-256 GiB (about 6 TiB), a slow tier of 1 GiB/s
 * (one 10 GbE NFS mount). A training job arrives every 5 minutes on
 * average, reads its dataset 2 to 10 times (epochs) at 64-512 MiB/s, so
 * about 6 run at once and together they ask a little more than the slow
 * tier gives: the regime in which a cache matters.
 */
export const WORKLOAD = {
  datasets: 100,
  minSize: 8 * GiB,
  maxSize: 256 * GiB,
  horizon: 24 * 3600,
  trainInterarrival: 5 * 60,
  minTrainRate: 64 * MiB,
  maxTrainRate: 512 * MiB,
  minEpochs: 2,
  maxEpochs: 10,
  /** Zipf exponent of dataset popularity: the top 10 of 100 datasets get 56% of the jobs. */
  zipfS: 1.0,
  /** shifting: the popularity ranking is drawn again this often. */
  shiftEvery: 3 * 3600,
  /** scan: one-off passes over a dataset picked uniformly, on top of the steady training load. */
  scanInterarrival: 10 * 60,
  minScanRate: 256 * MiB,
  maxScanRate: 1024 * MiB,
} as const;

/** WORKLOAD's numbers, any of which a sensitivity run may change. */
export type Workload = { -readonly [K in keyof typeof WORKLOAD]: number };

export function makeTrace(kind: TraceKind, seed: number, changes: Partial<Workload> = {}): Trace {
  const w: Workload = { ...WORKLOAD, ...changes };
  // Separate streams, so that the sizes and the training jobs of a seed are
  // the same in every trace kind: the kinds differ only in what they add.
  const sizeRand = prng(seed * 7919 + 1);
  const jobRand = prng(seed * 7919 + 2);
  const rankRand = prng(seed * 7919 + 3);
  const scanRand = prng(seed * 7919 + 4);

  const sizes = Array.from({ length: w.datasets }, () => Math.round(logUniform(sizeRand, w.minSize, w.maxSize)));
  const drawRank = zipf(w.datasets, w.zipfS);
  const ranking = (): number[] => shuffle(rankRand, Array.from({ length: w.datasets }, (_, i) => i));
  let byRank = ranking();
  let phase = 0;

  const jobs: SimJob[] = [];
  for (let t = exponential(jobRand, w.trainInterarrival); t < w.horizon; t += exponential(jobRand, w.trainInterarrival)) {
    if (kind === "shifting" && Math.floor(t / w.shiftEvery) !== phase) {
      phase = Math.floor(t / w.shiftEvery);
      byRank = ranking();
    }
    const dataset = byRank[drawRank(jobRand)] as number;
    const rate = logUniform(jobRand, w.minTrainRate, w.maxTrainRate);
    const epochs = logUniform(jobRand, w.minEpochs, w.maxEpochs);
    jobs.push({ dataset, start: t, rate, bytes: epochs * (sizes[dataset] as number), kind: "train" });
  }
  if (kind === "scan") {
    for (let t = exponential(scanRand, w.scanInterarrival); t < w.horizon; t += exponential(scanRand, w.scanInterarrival)) {
      const dataset = Math.floor(scanRand() * w.datasets);
      jobs.push({ dataset, start: t, rate: logUniform(scanRand, w.minScanRate, w.maxScanRate), bytes: sizes[dataset] as number, kind: "scan" });
    }
  }
  jobs.sort((a, b) => a.start - b.start);
  return { name: kind, seed, sizes, jobs, horizon: w.horizon };
}

export function totalSize(trace: Trace): number {
  return trace.sizes.reduce((s, x) => s + x, 0);
}

/**
 * One simulation run as plain data, so that it can be sent to a worker
 * thread: the suites build lists of tasks, the pool runs them on every core,
 * and each result depends only on its task (seeded traces, simulated clock),
 * whatever thread ran it and in whatever order.
 */
import os from "node:os";
import { Worker } from "node:worker_threads";
import { GiB } from "../datasets.js";
import { simulate, type SimConfig, type SimPolicy, type SimResult } from "./engine.js";
import { OursPolicy } from "./ours.js";
import { OraclePolicy, OriginalPolicy } from "./policies.js";
import { makeTrace, totalSize, type Trace, type TraceKind, type Workload } from "./trace.js";
import { VariantPolicy, type VariantParams } from "./variants.js";

export type PolicySpec =
  | { kind: "original" }
  | { kind: "ours" }
  | { kind: "oracle"; horizonS: number; chargeCopy: boolean; forecast?: boolean }
  | { kind: "variant"; label: string; params: VariantParams };

export interface Task {
  trace: TraceKind;
  seed: number;
  /** Capacity as a share of the trace's total data. */
  share: number;
  policy: PolicySpec;
  /** Changes to WORKLOAD, for sensitivity runs. */
  workload?: Partial<Workload>;
}

/**
 * The node being simulated: a 1 GiB/s slow tier (10 GbE NFS), a 4 GiB/s
 * SSD, and the daemon's defaults (interval 5 s, period 1200 s, 2 copies at once).
 */
export const NODE = { slowBandwidth: GiB, cacheBandwidth: 4 * GiB, intervalS: 5, periodS: 1200, maxCopies: 2 } as const;

/**
 * The oracle's grid: it may pick its look-ahead after the fact, being
 * offline. Longer look-aheads (2 h, 8 h) never won on seeds 1-3: they keep
 * datasets that will be read later at the expense of those read now.
 */
export const ORACLE_GRID: readonly { horizonS: number; chargeCopy: boolean; forecast?: boolean }[] = [
  ...[1800, 3600].flatMap((horizonS) => [
    { horizonS, chargeCopy: true },
    { horizonS, chargeCopy: false },
  ]),
  ...[300, 900, 1800].map((horizonS) => ({ horizonS, chargeCopy: false, forecast: true })),
];

const traces = new Map<string, Trace>();

function traceFor(kind: TraceKind, seed: number, workload: Partial<Workload> = {}): Trace {
  const key = `${kind}/${seed}/${JSON.stringify(workload)}`;
  let t = traces.get(key);
  if (!t) {
    t = makeTrace(kind, seed, workload);
    traces.set(key, t);
  }
  return t;
}

export function runTask(task: Task): SimResult {
  const trace = traceFor(task.trace, task.seed, task.workload);
  const config: SimConfig = { ...NODE, capacity: Math.floor(totalSize(trace) * task.share) };
  const n = trace.sizes.length;
  let policy: SimPolicy;
  switch (task.policy.kind) {
    case "original":
      policy = new OriginalPolicy(n, NODE.periodS);
      break;
    case "ours":
      policy = new OursPolicy(n, NODE.periodS);
      break;
    case "oracle":
      policy = new OraclePolicy(trace, config, task.policy);
      break;
    case "variant":
      policy = new VariantPolicy(n, task.policy.params, task.policy.label);
      break;
  }
  return simulate(trace, policy, config);
}

/**
 * Runs the tasks on up to `threads` worker threads, the oracle's first (its
 * look-ahead walks every future job of a dataset each tick, the longest
 * runs), and returns the results in task order.
 */
export async function runTasks(tasks: readonly Task[], threads = os.availableParallelism()): Promise<SimResult[]> {
  const results = new Array<SimResult | undefined>(tasks.length);
  const cost = (t: Task) => (t.policy.kind === "oracle" ? 2 : 1);
  const queue = tasks.map((t, i) => i).sort((a, b) => cost(tasks[b] as Task) - cost(tasks[a] as Task));
  const count = Math.max(1, Math.min(threads, tasks.length));
  await Promise.all(
    Array.from({ length: count }, async () => {
      const worker = new Worker(new URL("./worker.js", import.meta.url));
      try {
        for (let i = queue.shift(); i !== undefined; i = queue.shift()) {
          const task = tasks[i] as Task;
          results[i] = await new Promise<SimResult>((resolve, reject) => {
            worker.once("message", (r: SimResult) => resolve(r));
            worker.once("error", reject);
            worker.postMessage(task);
          });
          worker.removeAllListeners("error");
        }
      } finally {
        await worker.terminate();
      }
    }),
  );
  return results.map((r, i) => {
    if (!r) throw new Error(`simulation task ${i} returned nothing`);
    return r;
  });
}

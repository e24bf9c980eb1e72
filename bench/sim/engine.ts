/**
 * The trace-driven simulator: the daemon's loop on a simulated clock. Every
 * `interval` it does what Daemon.tick does (feed the read counters to the
 * statistics, plan, evict, cancel, admit copies with the daemon's own
 * admitCopies, start them in a pool of maxCopies), then lets the jobs and
 * the copies move bytes for one interval.
 *
 * Storage model: the slow tier is one shared link of `slowBandwidth` bytes/s,
 * used by the jobs that read a dataset from it and by the copies. When the
 * flows ask for more than the link gives, each gets a share in proportion to
 * what it asks (as blk-throttle and NFS behave: a 48 MiB/s reader gets more
 * than a 32 MiB/s one), and a copy asks COPY_DEMAND_LINKS times the link, so
 * it takes most of it; a copy slows the jobs down and they slow the copy
 * down. The cache tier is a second link of `cacheBandwidth`, shared the
 * same way. A job reads from the cache as soon as its dataset's copy is
 * mounted (a dataset has many files, and new opens go to the top mount), and
 * back from the slow tier as soon as the copy is dropped. Files held
 * open across an eviction (ghost space) are not modelled.
 */
import type { Dataset } from "../../src/plan/catalog.js";
import { admitCopies } from "../../src/plan/policy.js";
import { makeDataset } from "../datasets.js";
import type { Trace } from "./trace.js";

export interface SimConfig {
  /** Bytes the cache may hold (the daemon's capacity; no ghost space, so also its budget). */
  capacity: number;
  slowBandwidth: number;
  cacheBandwidth: number;
  /** The daemon's `interval` and `period`, seconds. */
  intervalS: number;
  periodS: number;
  maxCopies: number;
}

/** What a job still has to read, as the oracle sees it. */
export interface ActiveRead {
  dataset: number;
  remaining: number;
  rate: number;
}

export interface PolicyView {
  nowMs: number;
  /** Index-aligned with the trace's sizes; `cache` is "valid" when the copy is mounted. */
  datasets: readonly Dataset[];
  /** Copies queued or running, by dataset name: bytes done so far. */
  copying: ReadonlyMap<string, number>;
  budgetBytes: number;
  active: readonly ActiveRead[];
}

export interface Decision {
  cached: ReadonlySet<string>;
  /** Copies are admitted in decreasing priority (the daemon uses slow + cache rate). */
  priority: (d: Dataset) => number;
}

export interface SimPolicy {
  readonly name: string;
  /** Each tick, each dataset's cumulative bytes read through its slow and its cache mount: what /proc/diskstats gives the daemon. */
  observe(nowMs: number, index: number, slowBytes: number, cacheBytes: number): void;
  decide(view: PolicyView): Decision;
}

export interface SimResult {
  policy: string;
  trace: string;
  seed: number;
  capacity: number;
  totalBytes: number;
  cacheBytes: number;
  /** Bytes copies read from the slow tier, including copies cancelled half-way. */
  copiedBytes: number;
  copiesStarted: number;
  copiesDone: number;
  copiesCancelled: number;
  /** Complete copies deleted because the plan dropped them. */
  evictions: number;
  /** Mean over jobs of (time taken / time at the job's own rate): how much the slow tier held jobs back. */
  meanStretch: number;
  /** Seconds of simulated time, arrivals plus the drain. */
  simulatedS: number;
  wallMs: number;
}

interface Copy {
  index: number;
  size: number;
  done: number;
  running: boolean;
}

interface Running {
  job: number;
  dataset: number;
  rate: number;
  remaining: number;
  started: number;
}

/**
 * What a running copy asks of the slow link, in multiples of the link's
 * bandwidth. A copy is one sequential reader with deep readahead (cp), so it
 * keeps the throttled queue full, while a job reads at its own pace. On the
 * testbed (BENCHMARKS.md, section 6: 64 MiB/s link, jobs asking 32-80 MiB/s
 * at the same time), copies ran at 48-64 MiB/s: d000 (192 MiB) in about 3 s
 * beside jobs asking 80 MiB/s, d003 (96 MiB) in 2 s. Under proportional
 * sharing a copy asking 4 links gets 64 x 256/336 = 49 MiB/s beside 80 MiB/s
 * of jobs and 54 beside one 48 MiB/s job: the low end of what was measured,
 * so this is, if anything, conservative. Two copies alone split the link
 * evenly, as on the testbed (section 3: 32 and 32 MiB/s).
 */
export const COPY_DEMAND_LINKS = 4;

/**
 * Shares of one link in proportion to demand. Flow i asks `rates[i]` bytes/s
 * but needs at most `caps[i]` (what it has left to read this interval). If
 * the caps fit in the link, each gets its cap; otherwise each gets the same
 * fraction s of its rate, s chosen so that the link is full, except flows
 * whose cap is below that, which get their cap (so that a flow about to
 * finish does finish, and the rest of its share goes to the others). `out`
 * receives the shares. Deterministic: ties are broken by index.
 */
function shareLink(rates: readonly number[], caps: readonly number[], capacity: number, out: number[]): void {
  let need = 0;
  for (const c of caps) need += c;
  if (need <= capacity) {
    for (let i = 0; i < caps.length; i++) out[i] = caps[i] as number;
    return;
  }
  // Water-filling by cap/rate: a flow whose cap is reached before the others' share gets its cap.
  const order = rates.map((_, i) => i).sort((x, y) => (caps[x] as number) / (rates[x] as number) - (caps[y] as number) / (rates[y] as number) || x - y);
  let left = capacity;
  let rateLeft = 0;
  for (const r of rates) rateLeft += r;
  for (const i of order) {
    const rate = rates[i] as number;
    const got = Math.min(caps[i] as number, rateLeft > 0 ? (left * rate) / rateLeft : 0);
    out[i] = got;
    left -= got;
    rateLeft -= rate;
  }
}

/** Jobs still running this long after the last arrival mean the workload cannot drain: stop and say so. */
const DRAIN_LIMIT_S = 7 * 24 * 3600;

export function simulate(trace: Trace, policy: SimPolicy, config: SimConfig): SimResult {
  const wallStart = performance.now();
  const n = trace.sizes.length;
  const datasets = trace.sizes.map((size, i) => makeDataset(`d${String(i).padStart(3, "0")}`, size));
  const indexOf = new Map(datasets.map((d, i) => [d.name, i]));
  const slowRead = new Float64Array(n);
  const cacheRead = new Float64Array(n);
  const copies = new Map<string, Copy>(); // insertion order = the pool's FIFO queue
  const running: Running[] = [];
  const dt = config.intervalS;
  let nextJob = 0;
  let totalBytes = 0;
  let cacheBytes = 0;
  let copiedBytes = 0;
  let copiesStarted = 0;
  let copiesDone = 0;
  let copiesCancelled = 0;
  let evictions = 0;
  let stretchSum = 0;
  let jobsDone = 0;
  let t = 0;

  const slowDemand: number[] = [];
  const slowCap: number[] = [];
  const slowShare: number[] = [];
  const cacheDemand: number[] = [];
  const cacheCap: number[] = [];
  const cacheShare: number[] = [];

  for (; t < trace.horizon || running.length > 0 || nextJob < trace.jobs.length; t += dt) {
    if (t > trace.horizon + DRAIN_LIMIT_S) throw new Error(`${trace.name}/${policy.name}: jobs still running ${DRAIN_LIMIT_S} s after the last arrival`);
    const nowMs = t * 1000;

    // 1. Observe: the loop devices' counters, as Stats.update gets them.
    for (let i = 0; i < n; i++) policy.observe(nowMs, i, slowRead[i] as number, cacheRead[i] as number);

    // 2. Plan.
    const copying = new Map<string, number>();
    for (const [name, c] of copies) copying.set(name, c.done);
    const active = running.map((r) => ({ dataset: r.dataset, remaining: r.remaining, rate: r.rate }));
    const { cached, priority } = policy.decide({ nowMs, datasets, copying, budgetBytes: config.capacity, active });

    // 3. Admission, as the daemon computes it: from the files and copies that
    //    exist at the start of the tick, before this tick's evictions.
    let occupied = 0;
    for (const d of datasets) if (d.cache === "valid") occupied += d.size;
    for (const c of copies.values()) occupied += c.size;
    const candidates = datasets.filter((d) => cached.has(d.name) && d.cache !== "valid" && !copies.has(d.name)).sort((a, b) => priority(b) - priority(a));
    // A cache file system of exactly `capacity` bytes: free space is what the copies leave.
    const admitted = admitCopies({ candidates, occupiedBytes: occupied, capacityBytes: config.capacity, writableBytes: config.capacity - occupied });

    // 4. Act: cancel, evict, start.
    for (const [name, c] of copies) {
      if (cached.has(name)) continue;
      copies.delete(name);
      if (c.done > 0 || c.running) copiesCancelled++;
    }
    for (const d of datasets) {
      if (d.cache === "valid" && !cached.has(d.name)) {
        d.cache = "none";
        evictions++;
      }
    }
    for (const name of admitted) {
      copies.set(name, { index: indexOf.get(name) as number, size: (datasets[indexOf.get(name) as number] as Dataset).size, done: 0, running: false });
    }
    let runningCopies = 0;
    for (const c of copies.values()) {
      if (!c.running && runningCopies < config.maxCopies) {
        c.running = true;
        copiesStarted++;
      }
      if (c.running) runningCopies++;
    }

    // 5. Jobs that arrive during this interval start now (at most `interval` early, as a tick sees them).
    while (nextJob < trace.jobs.length && (trace.jobs[nextJob]?.start as number) < t + dt) {
      const j = trace.jobs[nextJob];
      if (j) running.push({ job: nextJob, dataset: j.dataset, rate: j.rate, remaining: j.bytes, started: t });
      nextJob++;
    }

    // 6. Move bytes for one interval: jobs on the slow tier and running copies share it.
    slowDemand.length = 0;
    slowCap.length = 0;
    cacheDemand.length = 0;
    cacheCap.length = 0;
    const slowFlows: (Running | Copy)[] = [];
    const cacheFlows: Running[] = [];
    for (const r of running) {
      const onCache = (datasets[r.dataset] as Dataset).cache === "valid";
      const cap = Math.min(r.rate, r.remaining / dt);
      if (onCache) {
        cacheFlows.push(r);
        cacheDemand.push(r.rate);
        cacheCap.push(cap);
      } else {
        slowFlows.push(r);
        slowDemand.push(r.rate);
        slowCap.push(cap);
      }
    }
    const copyDemand = COPY_DEMAND_LINKS * config.slowBandwidth;
    for (const c of copies.values()) {
      if (!c.running) continue;
      slowFlows.push(c);
      slowDemand.push(copyDemand);
      slowCap.push(Math.min(copyDemand, (c.size - c.done) / dt));
    }
    shareLink(slowDemand, slowCap, config.slowBandwidth, slowShare);
    shareLink(cacheDemand, cacheCap, config.cacheBandwidth, cacheShare);
    for (let k = 0; k < slowFlows.length; k++) {
      const f = slowFlows[k] as Running | Copy;
      const bytes = (slowShare[k] as number) * dt;
      if ("job" in f) {
        f.remaining -= bytes;
        slowRead[f.dataset] = (slowRead[f.dataset] as number) + bytes;
        totalBytes += bytes;
      } else {
        f.done += bytes;
        copiedBytes += bytes;
      }
    }
    for (let k = 0; k < cacheFlows.length; k++) {
      const f = cacheFlows[k] as Running;
      const bytes = (cacheShare[k] as number) * dt;
      f.remaining -= bytes;
      cacheRead[f.dataset] = (cacheRead[f.dataset] as number) + bytes;
      totalBytes += bytes;
      cacheBytes += bytes;
    }

    // 7. Finished copies are mounted (the daemon's transfer pool wakes the loop at once); finished jobs leave.
    for (const [name, c] of copies) {
      if (c.running && c.done >= c.size - 0.5) {
        copies.delete(name);
        (datasets[c.index] as Dataset).cache = "valid";
        copiesDone++;
      }
    }
    for (let k = running.length - 1; k >= 0; k--) {
      const r = running[k] as Running;
      if (r.remaining > 0.5) continue;
      const job = trace.jobs[r.job];
      if (job) stretchSum += (t + dt - r.started) / Math.max(dt, job.bytes / job.rate);
      jobsDone++;
      running.splice(k, 1);
    }
  }

  return {
    policy: policy.name,
    trace: trace.name,
    seed: trace.seed,
    capacity: config.capacity,
    totalBytes,
    cacheBytes,
    copiedBytes,
    copiesStarted,
    copiesDone,
    copiesCancelled,
    evictions,
    meanStretch: jobsDone > 0 ? stretchSum / jobsDone : 1,
    simulatedS: t,
    wallMs: performance.now() - wallStart,
  };
}

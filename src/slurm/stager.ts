/**
 * Pre-staging (issue 21): data goes where jobs are about to run.
 *
 * The stager (one daemon of the cluster, slurm_stage = yes) lists the queue
 * every EVERY_MS, once for the whole cluster (slurm/queue.ts), and hands
 * each node its part: the datasets of the jobs the backfill scheduler has
 * planned there within HORIZON_MS. A node's part is sent only when it
 * changed, and again every REFRESH_MS, over peer fill's signed channel
 * (fleet/stage.ts). Load on slurmctld: one squeue RPC every 30 s, two a
 * minute, whatever the number of nodes and jobs (its cost grows with the
 * queue's length, as every squeue's does).
 *
 * A node keeps what it was handed (StagedSet) as datasets to cache (those
 * of jobs due soon making room, the rest in the room left: plan/decide.ts), until the job's
 * expected start and a grace after it, or until the stager stops refreshing
 * it; each entry is counted once as a hit (cached when its job was due, or
 * left the plan by starting early) or a miss.
 */
import { writeFileAtomic } from "../lib/atomic-file.js";
import type { Clock } from "../lib/clock.js";
import type { Runner } from "../lib/exec.js";
import { planStaging, readQueue, type StagedEntry } from "./queue.js";

export const EVERY_MS = 30_000;
/**
 * runtime_dir/slurm-features: the ds_ features active on some node, one
 * line, comma-separated, rewritten each round. The shipped job_submit.lua
 * (on slurmctld's host, where the stager runs) prefers only these.
 */
export const ACTIVE_FEATURES_FILE = "slurm-features";
/** Features written at most (the line job_submit.lua reads stays small). */
const MAX_ACTIVE_FEATURES = 10_000;
export const HORIZON_MS = 3600_000;
export const REFRESH_MS = 300_000;
/** A staged dataset stays this long after its job's expected start (jobs start late). */
export const GRACE_MS = 30 * 60_000;
/** A part the stager has not refreshed for this long is dropped (the stager is gone). */
export const TTL_MS = 3 * REFRESH_MS;

export interface StagerState {
  /** squeue calls made, and when the last listing was read. */
  listings: number;
  listedAt?: number;
  /** Jobs planned with datasets in the last listing, and the nodes handed a part. */
  jobs: number;
  nodes: number;
  sent: number;
  /** Each failing node's last error (no answer, a refused request). */
  errors: Record<string, string>;
  error?: string;
  /** ds_ features active on some node at the last round. */
  activeFeatures: number;
}

export class Stager {
  private startedAt = -Infinity;
  private running = false;
  /** What each node was last handed, and when. */
  private readonly handed = new Map<string, { key: string; at: number }>();
  readonly state: StagerState = { listings: 0, jobs: 0, nodes: 0, sent: 0, errors: {}, activeFeatures: 0 };

  constructor(
    private readonly run: Runner,
    private readonly clock: Clock,
    private readonly timeoutMs: () => number,
    /** Hands `node` (a Slurm node name) its part; "ok", or why not. */
    private readonly send: (node: string, entries: StagedEntry[]) => Promise<"ok" | string>,
    /** Where the active features are written (runtime_dir/slurm-features). */
    private readonly featuresFile: string,
  ) {}

  /** Writes the active features, and (staging) lists the queue and hands out the parts, if due and not already at it (in the background). */
  kick(staging: boolean): void {
    const now = this.clock.monotonic();
    if (this.running || now - this.startedAt < EVERY_MS) return;
    this.startedAt = now;
    this.running = true;
    void this.activeFeatures()
      .then(() => (staging ? this.round() : undefined))
      .finally(() => (this.running = false));
  }

  /** One `sinfo` for the cluster: the ds_ features active on some node, written for job_submit.lua. */
  private async activeFeatures(): Promise<void> {
    try {
      const { stdout } = await this.run("sinfo", ["--noheader", "--Node", "--format=%b"], { timeoutMs: this.timeoutMs() });
      const features = [...new Set(stdout.split(/[\s,]+/).filter((f) => /^ds_\w{1,255}$/.test(f)))].sort().slice(0, MAX_ACTIVE_FEATURES);
      await writeFileAtomic(this.featuresFile, `${features.join(",")}\n`, 0o644);
      this.state.activeFeatures = features.length;
    } catch (err) {
      this.state.error = err instanceof Error ? err.message.split("\n")[0] : String(err);
    }
  }

  private async round(): Promise<void> {
    let parts: Map<string, StagedEntry[]>;
    try {
      const jobs = await readQueue(this.run, this.timeoutMs());
      this.state.listings++;
      this.state.listedAt = this.clock.now();
      this.state.jobs = jobs.length;
      this.state.error = undefined;
      parts = planStaging(jobs, this.clock.now(), HORIZON_MS);
    } catch (err) {
      this.state.listings++;
      this.state.error = err instanceof Error ? err.message.split("\n")[0] : String(err);
      return;
    }
    // Nodes handed something before and nothing now are told so: their staged datasets go.
    for (const node of this.handed.keys()) if (!parts.has(node)) parts.set(node, []);
    this.state.nodes = [...parts.values()].filter((e) => e.length > 0).length;
    const now = this.clock.monotonic();
    for (const [node, entries] of parts) {
      const key = JSON.stringify(entries);
      const last = this.handed.get(node);
      if (last && last.key === key && now - last.at < REFRESH_MS) continue;
      const outcome = await this.send(node, entries);
      if (outcome === "ok") {
        this.state.sent++;
        this.state.errors = Object.fromEntries(Object.entries(this.state.errors).filter(([n]) => n !== node));
        if (entries.length === 0) this.handed.delete(node);
        else this.handed.set(node, { key, at: now });
      } else {
        this.state.errors[node] = outcome;
      }
    }
  }
}

/** What this node was handed by the stager(s), and what became of it. */
export class StagedSet {
  private readonly parts = new Map<string, { entries: StagedEntry[]; at: number }>();
  /** Entries counted (hit or miss) once ("jobId:dataset"), and those not yet, as last seen. */
  private readonly counted = new Set<string>();
  private watched = new Map<string, StagedEntry>();
  hits = 0;
  misses = 0;

  receive(by: string, entries: readonly StagedEntry[], now: number): void {
    if (entries.length === 0) this.parts.delete(by);
    else this.parts.set(by, { entries: [...entries], at: now });
  }

  /** The datasets to stage now, earliest job first, each once. */
  current(now: number): StagedEntry[] {
    const best = new Map<string, StagedEntry>();
    for (const [by, part] of this.parts) {
      if (now - part.at > TTL_MS) {
        this.parts.delete(by);
        continue;
      }
      for (const e of part.entries) {
        if (now > e.startAt + GRACE_MS) continue;
        const had = best.get(e.dataset);
        if (!had || e.startAt < had.startAt) best.set(e.dataset, e);
      }
    }
    return [...best.values()].sort((a, b) => a.startAt - b.startAt || (a.dataset < b.dataset ? -1 : 1));
  }

  /**
   * Counts each entry once, when its job is due or leaves the stager's plan
   * (it started early, or was cancelled): a hit if its dataset is cached
   * then, else a miss.
   */
  settle(now: number, cached: (dataset: string) => boolean): void {
    const current = new Map(this.current(now).map((e) => [`${e.jobId}:${e.dataset}`, e]));
    for (const [id, e] of [...this.watched, ...current]) {
      if (this.counted.has(id) || (current.has(id) && now < e.startAt)) continue;
      this.counted.add(id);
      if (cached(e.dataset)) this.hits++;
      else this.misses++;
    }
    this.watched = new Map([...current].filter(([id]) => !this.counted.has(id)));
    if (this.counted.size > 100_000) this.counted.clear();
  }
}

/**
 * Pre-staging (issue 21): what the Slurm queue says of jobs to come. One
 * call for the whole cluster, by one daemon (slurm_stager), never one per
 * node: `squeue --start --states=PENDING` lists each pending job the
 * backfill scheduler has placed, with its expected start and its planned
 * nodes; the comment names its datasets (datasets:NAME,... as for the
 * prolog). Pure but for readQueue.
 */
import type { Runner } from "../lib/exec.js";
import { datasetsInComment } from "./job.js";

export interface PlannedJob {
  jobId: number;
  /** Expected start, ms since the epoch. */
  startAt: number;
  /** The nodes the scheduler planned it on. */
  nodes: string[];
  datasets: string[];
}

/** squeue's format: id, expected start (epoch seconds through SLURM_TIME_FORMAT), planned nodes, then the comment (which may hold the separator). */
export const QUEUE_FORMAT = "%i|%S|%Y|%k";

/** Most jobs taken from one listing, and most nodes of one job: the queue is bounded here whatever its length. */
const MAX_JOBS = 20_000;
const MAX_NODES_PER_JOB = 1024;

/**
 * Expands a Slurm host list: "node[01-03,7],gpu5" -> node01, node02, node03,
 * node7, gpu5. At most `max` names; undefined for what is not one. Pure.
 */
export function expandHostlist(list: string, max = MAX_NODES_PER_JOB): string[] | undefined {
  const out: string[] = [];
  // Split on commas outside brackets.
  const parts = list.match(/[^,[]+(?:\[[^\]]*\][^,[]*)*/g) ?? [];
  for (const part of parts) {
    const m = /^([^[\]]*)\[([^\]]+)\]([^[\]]*)$/.exec(part);
    if (!m) {
      if (!/^[A-Za-z0-9._-]+$/.test(part)) return undefined;
      out.push(part);
    } else {
      const [, prefix, ranges, suffix] = m as unknown as [string, string, string, string];
      for (const range of ranges.split(",")) {
        const r = /^(\d+)(?:-(\d+))?$/.exec(range);
        if (!r) return undefined;
        const [lo, hi] = [Number(r[1]), Number(r[2] ?? r[1])];
        if (hi < lo) return undefined;
        const width = (r[1] as string).length;
        for (let i = lo; i <= hi; i++) {
          out.push(`${prefix}${String(i).padStart(width, "0")}${suffix}`);
          if (out.length > max) return out.slice(0, max);
        }
      }
    }
    if (out.length >= max) return out.slice(0, max);
  }
  return out;
}

/**
 * `squeue --start --noheader --format QUEUE_FORMAT` with SLURM_TIME_FORMAT=%s:
 * the jobs placed on nodes, with a start time, that name datasets. Jobs
 * not yet placed (N/A) or naming none are left out. Pure.
 */
export function parseQueue(text: string): PlannedJob[] {
  const jobs: PlannedJob[] = [];
  for (const line of text.split("\n")) {
    if (jobs.length >= MAX_JOBS) break;
    const fields = line.split("|");
    if (fields.length < 4) continue;
    const [id, start, nodes] = fields as [string, string, string];
    const comment = fields.slice(3).join("|");
    const jobId = Number(id.trim());
    const startS = Number(start.trim());
    if (!Number.isSafeInteger(jobId) || !Number.isFinite(startS) || startS <= 0) continue;
    const planned = expandHostlist(nodes.trim());
    if (!planned || planned.length === 0) continue;
    const datasets = datasetsInComment(comment).slice(0, 64);
    if (datasets.length === 0) continue;
    jobs.push({ jobId, startAt: startS * 1000, nodes: planned, datasets });
  }
  return jobs;
}

/** One listing of the queue: one RPC to slurmctld, whatever the number of nodes. */
export async function readQueue(run: Runner, timeoutMs: number): Promise<PlannedJob[]> {
  const { stdout } = await run("squeue", ["--start", "--states=PENDING", "--noheader", `--format=${QUEUE_FORMAT}`], { timeoutMs, env: { SLURM_TIME_FORMAT: "%s" } });
  return parseQueue(stdout);
}

export interface StagedEntry {
  dataset: string;
  jobId: number;
  startAt: number;
}

/**
 * Each node's part: the datasets of the jobs planned on it that start
 * within `horizonMs`, the earliest job for each dataset. Pure.
 */
export function planStaging(jobs: readonly PlannedJob[], now: number, horizonMs: number): Map<string, StagedEntry[]> {
  const byNode = new Map<string, Map<string, StagedEntry>>();
  for (const job of jobs) {
    if (job.startAt - now > horizonMs) continue;
    for (const node of job.nodes) {
      const entries = byNode.get(node) ?? new Map<string, StagedEntry>();
      byNode.set(node, entries);
      for (const dataset of job.datasets) {
        const had = entries.get(dataset);
        if (!had || job.startAt < had.startAt) entries.set(dataset, { dataset, jobId: job.jobId, startAt: job.startAt });
      }
    }
  }
  return new Map([...byNode].map(([node, entries]) => [node, [...entries.values()].sort((a, b) => (a.dataset < b.dataset ? -1 : 1))]));
}

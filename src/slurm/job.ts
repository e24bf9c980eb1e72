/**
 * What a Slurm job asks of the cache: the datasets its comment names
 * (`sbatch --comment=datasets:coco,imagenet`) and its time limit, which the
 * prolog's pins last. Read from Slurm's JSON output, never by splitting
 * `scontrol show job`'s text, where a comment holding spaces or "Key=value"
 * would be taken for other fields.
 */
import type { Runner } from "../lib/exec.js";
import { errorMessage } from "../errors.js";

export interface SlurmJob {
  jobId: number;
  comment: string;
  /** Seconds; undefined when the job has no limit (UNLIMITED). */
  timeLimitSeconds: number | undefined;
}

/**
 * The names after "datasets:", comma-separated, wherever it stands in the
 * comment ("sweep 7; datasets:coco,imagenet lr=0.1"): a word of its own,
 * so that "mydatasets:x" is not one. Other text is left alone.
 */
export function datasetsInComment(comment: string): string[] {
  const names: string[] = [];
  for (const [, list] of comment.matchAll(/(?:^|[\s;,])datasets:(\S*)/g)) {
    for (const name of (list as string).split(",")) if (name !== "" && !names.includes(name)) names.push(name);
  }
  return names;
}

/**
 * A time limit as Slurm's JSON gives it, in minutes: a number (Slurm 22.05,
 * OpenAPI v0.0.38; null when UNLIMITED), or {set, infinite, number} (23.02
 * and later). Slurm's "no value" and "infinite" sentinels (0xfffffffe,
 * 0xffffffff) count as no limit.
 */
function timeLimitMinutes(value: unknown): number | undefined {
  if (typeof value === "number") return value > 0 && value < 0xfffffffe ? value : undefined;
  if (typeof value === "object" && value !== null) {
    const v = value as { set?: unknown; infinite?: unknown; number?: unknown };
    if (v.infinite === true || v.set === false) return undefined;
    return timeLimitMinutes(v.number);
  }
  return undefined;
}

/**
 * The job `jobId` in the output of `scontrol --json show job ID` (one job)
 * or `squeue --json` (Slurm 22.05 lists every job there, whatever --jobs
 * says). Undefined when the job is not in it; throws when the text is not
 * Slurm's JSON.
 */
export function parseJobJson(text: string, jobId: number): SlurmJob | undefined {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new Error(`not JSON (${errorMessage(err)})`);
  }
  const jobs = (data as { jobs?: unknown }).jobs;
  if (!Array.isArray(jobs)) throw new Error('no "jobs" list in Slurm\'s JSON');
  for (const job of jobs as Record<string, unknown>[]) {
    if (Number(job.job_id) !== jobId) continue;
    const minutes = timeLimitMinutes(job.time_limit);
    return { jobId, comment: typeof job.comment === "string" ? job.comment : "", timeLimitSeconds: minutes === undefined ? undefined : minutes * 60 };
  }
  return undefined;
}

const SLURM_TIMEOUT_MS = 15_000;

/**
 * Ask Slurm for one job: `scontrol --json show job ID` (Slurm >= 23.02, one
 * job), else `squeue --json --jobs ID` (Slurm 21.08 to 22.05, whose scontrol
 * has no --json). Each has a timeout: a prolog must not wait on a slow
 * slurmctld.
 */
export async function readSlurmJob(jobId: number, run: Runner): Promise<SlurmJob> {
  const id = String(jobId);
  const attempts: [string, string[]][] = [
    ["scontrol", ["--json", "show", "job", id]],
    ["squeue", ["--json", "--jobs", id]],
  ];
  const failures: string[] = [];
  for (const [file, args] of attempts) {
    try {
      const { stdout } = await run(file, args, { timeoutMs: SLURM_TIMEOUT_MS });
      const job = parseJobJson(stdout, jobId);
      if (job) return job;
      failures.push(`${file}: job ${id} is not in its output`);
    } catch (err) {
      failures.push(`${file}: ${errorMessage(err)}`);
    }
  }
  throw new Error(`cannot read Slurm job ${id}: ${failures.join("; ")}`);
}

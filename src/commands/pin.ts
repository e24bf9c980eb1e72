import { run as realRun, type Runner } from "../lib/exec.js";
import { configuredDir } from "../config.js";
import { errorMessage, UsageError } from "../errors.js";
import { systemClock, type Clock } from "../lib/clock.js";
import { validName } from "../names.js";
import { datasetsInComment, readSlurmJob, type SlurmJob } from "../slurm/job.js";
import { isActive, readPins, updatePins, type Pin } from "../state/pins.js";
import { DURATION_FORMS, parseDuration } from "../units.js";

export interface PinFlags {
  for?: string;
  owner?: string;
  all?: boolean;
  config?: string;
  stateDir?: string;
  slurmJob?: string;
}

/** What `pin --slurm-job` reads besides the pins file, injected by the tests. */
export interface SlurmDeps {
  run: Runner;
  env: NodeJS.ProcessEnv;
  clock: Clock;
}

/** A job without a time limit (UNLIMITED): its pins end a week on, if its epilog never removes them (a node that died). */
const UNLIMITED_JOB_PIN_S = 7 * 24 * 3600;

const DEFAULT_OWNER = "admin";

/** --state-dir, else the config file's state_dir, else the default: the same directory the daemon reads. */
const stateDirFor = (flags: PinFlags) => configuredDir("state_dir", flags.stateDir, flags.config);

function checkNames(names: readonly string[]): void {
  for (const name of names) {
    const invalid = validName(name);
    if (invalid) throw new UsageError(`pin: ${JSON.stringify(name)} is not a dataset name (${invalid}); give the name under mountdir, e.g. coco`);
  }
}

function describe(p: Pin): string {
  return `${p.name}\t${p.owner}\t${p.until === undefined ? "until unpinned" : `until ${new Date(p.until).toISOString()}`}`;
}

/** `scratch_manager pin [NAME...] [--for 4h] [--owner ID]`: with no name, lists the pins. */
export async function pinCommand(names: string[], flags: PinFlags): Promise<void> {
  if (flags.slurmJob !== undefined) return pinSlurmJob(names, flags, { run: realRun, env: process.env, clock: systemClock });
  const stateDir = await stateDirFor(flags);
  if (names.length === 0) {
    const now = systemClock.now();
    for (const p of (await readPins(stateDir)).filter((p) => isActive(p, now))) process.stdout.write(`${describe(p)}\n`);
    return;
  }
  checkNames(names);
  let until: number | undefined;
  if (flags.for !== undefined) {
    const seconds = parseDuration(flags.for);
    if (seconds === undefined || !(seconds > 0)) throw new UsageError(`pin: --for ${JSON.stringify(flags.for)} is not valid; expected ${DURATION_FORMS}`);
    until = systemClock.now() + seconds * 1000;
  }
  const owner = flags.owner ?? DEFAULT_OWNER;
  const pins = await updatePins(stateDir, systemClock, (pins) => [
    ...pins.filter((p) => !(names.includes(p.name) && p.owner === owner)),
    ...names.map((name): Pin => (until === undefined ? { name, owner } : { name, owner, until })),
  ]);
  for (const p of pins.filter((p) => names.includes(p.name) && p.owner === owner)) process.stdout.write(`pinned ${describe(p)}\n`);
}

/**
 * `scratch_manager unpin NAME... [--owner ID | --all]`: removes that owner's
 * pins of those datasets (every owner's with --all); `unpin --owner ID`
 * alone removes all of that owner's pins (a Slurm epilog).
 */
export async function unpinCommand(names: string[], flags: PinFlags): Promise<void> {
  if (names.length === 0 && flags.owner === undefined) throw new UsageError("unpin: name the datasets, or give --owner to remove all of that owner's pins");
  checkNames(names);
  const stateDir = await stateDirFor(flags);
  const owner = flags.owner ?? DEFAULT_OWNER;
  const removed: Pin[] = [];
  await updatePins(stateDir, systemClock, (pins) =>
    pins.filter((p) => {
      const drop = (names.length === 0 || names.includes(p.name)) && (flags.all === true || p.owner === owner);
      if (drop) removed.push(p);
      return !drop;
    }),
  );
  for (const p of removed) process.stdout.write(`unpinned ${p.name}\t${p.owner}\n`);
  const missing = names.filter((n) => !removed.some((p) => p.name === n));
  if (missing.length > 0) process.stderr.write(`scratch_manager: no pin of ${missing.join(", ")} by ${flags.all ? "anyone" : owner}\n`);
}

/**
 * `scratch_manager pin --slurm-job ID` (the Slurm prolog): pins the datasets
 * the job's comment names ("datasets:coco,imagenet", anywhere in it), for
 * the job's time limit, with the job as owner (slurm-ID), so that its epilog
 * (`unpin --owner slurm-ID`) removes its pins only. The comment comes from
 * the prolog's environment (SLURM_JOB_COMMENT) when it is this job's, so
 * that a job naming no dataset costs no call to slurmctld; else from
 * Slurm's JSON, as the time limit does. Names that are not valid
 * are left out and reported (exit status 2) after the others are pinned.
 */
export async function pinSlurmJob(names: string[], flags: PinFlags, deps: SlurmDeps): Promise<void> {
  const id = flags.slurmJob ?? "";
  if (!/^\d+$/.test(id)) throw new UsageError(`pin: --slurm-job ${JSON.stringify(id)} is not valid; expected a Slurm job ID such as 4711`);
  if (names.length > 0 || flags.for !== undefined || flags.all === true) throw new UsageError("pin: --slurm-job takes the datasets and the time limit from the job; give no NAME and no --for");
  const jobId = Number(id);
  // In the prolog, SLURM_JOB_COMMENT is set when the job has a comment; SLURM_SCRIPT_CONTEXT says this Slurm (22.05 on) sets it.
  const env = deps.env;
  const prolog = env.SLURM_JOB_ID === id && (env.SLURM_JOB_COMMENT !== undefined || env.SLURM_SCRIPT_CONTEXT !== undefined);
  const fromEnv = prolog ? (env.SLURM_JOB_COMMENT ?? "") : undefined;
  let job: SlurmJob | undefined;
  if (fromEnv === undefined) {
    try {
      job = await readSlurmJob(jobId, deps.run);
    } catch (err) {
      // One line, as the prolog logs it (exit status 1: not the user's mistake).
      throw new UsageError(`pin: ${errorMessage(err)}`, 1);
    }
  }
  const wanted = datasetsInComment(fromEnv ?? job?.comment ?? "");
  if (wanted.length === 0) return;
  const invalid = wanted.filter((n) => validName(n) !== undefined);
  const valid = wanted.filter((n) => validName(n) === undefined);
  if (valid.length > 0) {
    let seconds = UNLIMITED_JOB_PIN_S;
    try {
      job ??= await readSlurmJob(jobId, deps.run);
      seconds = job.timeLimitSeconds ?? UNLIMITED_JOB_PIN_S;
    } catch (err) {
      // The cache is still worth warming: the epilog removes the pins when the job ends.
      process.stderr.write(`scratch_manager: ${errorMessage(err)}; pinning for ${UNLIMITED_JOB_PIN_S} s\n`);
    }
    const owner = flags.owner ?? `slurm-${id}`;
    const until = deps.clock.now() + seconds * 1000;
    const stateDir = await stateDirFor(flags);
    const pins = await updatePins(stateDir, deps.clock, (pins) => [...pins.filter((p) => !(valid.includes(p.name) && p.owner === owner)), ...valid.map((name): Pin => ({ name, owner, until }))]);
    for (const p of pins.filter((p) => valid.includes(p.name) && p.owner === owner)) process.stdout.write(`pinned ${describe(p)}\n`);
  }
  if (invalid.length > 0) {
    throw new UsageError(`pin: job ${id} names ${invalid.map((n) => `${JSON.stringify(n)} (${validName(n) ?? ""})`).join(", ")}: not dataset names; the others are pinned`);
  }
}

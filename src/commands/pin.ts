import { run as realRun, type Runner } from "../lib/exec.js";
import { configuredDir } from "../config.js";
import { errorMessage, UsageError } from "../errors.js";
import { systemClock, type Clock } from "../lib/clock.js";
import { validName } from "../names.js";
import { datasetsInComment, readSlurmJob, type SlurmJob } from "../slurm/job.js";
import { isActive, readPins, updatePins, type Pin } from "../state/pins.js";
import { parseDuration } from "../units.js";
import { errnoCode } from "../errors.js";
import { didYouMean } from "../lib/suggest.js";
import { formatClock } from "../report/clock.js";
import { readStatusFile } from "../report/status-file.js";

export interface PinFlags {
  for?: string;
  owner?: string;
  all?: boolean;
  config?: string;
  stateDir?: string;
  slurmJob?: string;
  /** Pin names the running daemon does not know (an image not yet in datadir). */
  force?: boolean;
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

/** A pin as a line; its end in local time, as `status` shows times. */
function describe(p: Pin, now: number): string {
  return `${p.name}\t${p.owner}\t${p.until === undefined ? "until unpinned" : `until ${formatClock(p.until, now)}`}`;
}

/** --for: a duration with its unit (a bare 4 would silently mean 4 seconds). */
const PIN_DURATION_FORMS = "a number followed by s, m, h or d, e.g. 30m, 2h or 7d";

function parsePinDuration(text: string): number {
  const seconds = /[smhd]\s*$/i.test(text) ? parseDuration(text) : undefined;
  if (seconds === undefined || !(seconds > 0)) throw new UsageError(`pin: --for ${JSON.stringify(text)} is not valid; expected ${PIN_DURATION_FORMS}`);
  return seconds;
}

/** Writing the pins needs root (state_dir is root's): one line that says so, not a stack. */
async function writingPins<T>(stateDir: string, write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (err) {
    const code = errnoCode(err);
    if (code === "EACCES" || code === "EPERM" || code === "EROFS") throw new UsageError(`cannot change the pins in ${stateDir} (${code}); pins are root's: run it as root (sudo scratch_manager ...)`, 1);
    throw err;
  }
}

/**
 * Names the running daemon does not know are refused, with the closest one;
 * --force pins them anyway (an image about to be dropped into datadir).
 * Without a daemon to ask, the pin is kept and a warning says it was not checked.
 */
async function checkKnown(names: readonly string[], flags: PinFlags): Promise<void> {
  if (flags.force === true) return;
  let known: string[];
  try {
    const report = await readStatusFile(await configuredDir("runtime_dir", undefined, flags.config));
    known = report.datasets.map((d) => d.name);
  } catch (err) {
    process.stderr.write(`scratch_manager: pin: the names were not checked (${errorMessage(err)})\n`);
    return;
  }
  const unknown = names.filter((n) => !known.includes(n));
  if (unknown.length === 0) return;
  const what = unknown.map((n) => `${JSON.stringify(n)}${didYouMean(n, known).replace(/^; /, " (").replace(/\?$/, "?)")}`).join(", ");
  throw new UsageError(`pin: no dataset ${what}; nothing pinned. --force pins a name the daemon does not know yet (an image about to be added)`, 1);
}

/** `scratch_manager pin [NAME...] [--for 4h] [--owner ID]`: with no name, lists the pins. */
export async function pinCommand(names: string[], flags: PinFlags): Promise<void> {
  if (flags.slurmJob !== undefined) return pinSlurmJob(names, flags, { run: realRun, env: process.env, clock: systemClock });
  const stateDir = await stateDirFor(flags);
  if (names.length === 0) {
    const now = systemClock.now();
    for (const p of (await readPins(stateDir)).filter((p) => isActive(p, now))) process.stdout.write(`${describe(p, now)}\n`);
    return;
  }
  checkNames(names);
  const seconds = flags.for === undefined ? undefined : parsePinDuration(flags.for);
  await checkKnown(names, flags);
  const owner = flags.owner ?? DEFAULT_OWNER;
  const now = systemClock.now();
  const until = seconds === undefined ? undefined : now + seconds * 1000;
  const pins = await writingPins(stateDir, () =>
    updatePins(stateDir, systemClock, (pins) => [
      ...pins.filter((p) => !(names.includes(p.name) && p.owner === owner)),
      ...names.map((name): Pin => (until === undefined ? { name, owner } : { name, owner, until })),
    ]),
  );
  for (const p of pins.filter((p) => names.includes(p.name) && p.owner === owner)) process.stdout.write(`pinned ${describe(p, now)}\n`);
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
  const kept: Pin[] = [];
  await writingPins(stateDir, () =>
    updatePins(stateDir, systemClock, (pins) =>
      pins.filter((p) => {
        const drop = (names.length === 0 || names.includes(p.name)) && (flags.all === true || p.owner === owner);
        (drop ? removed : kept).push(p);
        return !drop;
      }),
    ),
  );
  for (const p of removed) process.stdout.write(`unpinned ${p.name}\t${p.owner}\n`);
  for (const name of names.filter((n) => !removed.some((p) => p.name === n))) {
    const others = kept.filter((p) => p.name === name).map((p) => p.owner);
    const hint = others.length > 0 ? `; it is pinned by ${others.join(", ")}: unpin ${name} --owner ${others[0] ?? ""}, or --all for every owner` : "";
    process.stderr.write(`scratch_manager: no pin of ${name} by ${flags.all ? "anyone" : owner}${hint}\n`);
  }
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
    const pins = await writingPins(stateDir, () => updatePins(stateDir, deps.clock, (pins) => [...pins.filter((p) => !(valid.includes(p.name) && p.owner === owner)), ...valid.map((name): Pin => ({ name, owner, until }))]));
    for (const p of pins.filter((p) => valid.includes(p.name) && p.owner === owner)) process.stdout.write(`pinned ${describe(p, deps.clock.now())}\n`);
  }
  if (invalid.length > 0) {
    throw new UsageError(`pin: job ${id} names ${invalid.map((n) => `${JSON.stringify(n)} (${validName(n) ?? ""})`).join(", ")}: not dataset names; the others are pinned`);
  }
}

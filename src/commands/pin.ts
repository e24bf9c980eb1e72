import { configuredDir } from "../config.js";
import { UsageError } from "../errors.js";
import { validName } from "../names.js";
import { isActive, readPins, updatePins, type Pin } from "../state/pins.js";
import { DURATION_FORMS, parseDuration } from "../units.js";

export interface PinFlags {
  for?: string;
  owner?: string;
  all?: boolean;
  config?: string;
  stateDir?: string;
}

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
  const stateDir = await stateDirFor(flags);
  if (names.length === 0) {
    const now = Date.now();
    for (const p of (await readPins(stateDir)).filter((p) => isActive(p, now))) process.stdout.write(`${describe(p)}\n`);
    return;
  }
  checkNames(names);
  let until: number | undefined;
  if (flags.for !== undefined) {
    const seconds = parseDuration(flags.for);
    if (seconds === undefined || !(seconds > 0)) throw new UsageError(`pin: --for ${JSON.stringify(flags.for)} is not valid; expected ${DURATION_FORMS}`);
    until = Date.now() + seconds * 1000;
  }
  const owner = flags.owner ?? DEFAULT_OWNER;
  const pins = await updatePins(stateDir, (pins) => [
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
  await updatePins(stateDir, (pins) =>
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

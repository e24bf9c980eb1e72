import picomatch from "picomatch";
import { run } from "../lib/exec.js";
import { configuredDir } from "../config.js";
import { errorMessage, UsageError } from "../errors.js";
import { DaemonNotRunning, readStatusFile, StatusFileError } from "../report/status-file.js";
import type { DatasetState, StatusReport } from "../report/status.js";
import { fsUsage } from "../observe/snapshot.js";
import { renderStatus, type FsSpace, type Selection } from "../report/table.js";

export interface StatusFlags {
  json?: boolean;
  runtimeDir?: string;
  config?: string;
  /** Show only these states (comma-separated, or the option repeated). */
  state?: string[];
}

/** What --state accepts: a dataset's state, or refused for the files that are not datasets. */
const STATE_SET: Record<DatasetState | "refused", true> = { cached: true, copying: true, queued: true, slow: true, refused: true };
export const STATES = Object.keys(STATE_SET) as (DatasetState | "refused")[];

/**
 * The datasets and refused images to show: those whose name (or refused
 * file's name) matches one of `patterns` (names or globs: `coco`, `coco.*`,
 * `imagenet-202?`), and whose state is one of `states`; undefined when
 * neither is given (everything). Throws UsageError for an unknown state.
 */
export function selectStatus(report: StatusReport, patterns: readonly string[], states: readonly string[]): Selection | undefined {
  const wanted = states.flatMap((s) => s.split(",")).map((s) => s.trim()).filter((s) => s !== "");
  for (const s of wanted) {
    if (!(STATES as string[]).includes(s)) throw new UsageError(`status: --state ${JSON.stringify(s)} is not a state; expected ${STATES.join(", ")}`);
  }
  if (patterns.length === 0 && wanted.length === 0) return undefined;
  const matches = patterns.length === 0 ? () => true : picomatch([...patterns], { dot: true });
  const stateOk = (s: string) => wanted.length === 0 || wanted.includes(s);
  const filters = [...patterns, ...(wanted.length > 0 ? [`--state ${wanted.join(",")}`] : [])].join(" ");
  return {
    datasets: report.datasets.filter((d) => matches(d.name) && stateOk(d.state)),
    refused: report.refused.filter((r) => matches(r.file.replace(/^.*\//, "")) && stateOk("refused")),
    filters,
  };
}

export interface StatusDeps {
  /** Size and free space of the file system holding a directory; stat -f in a child process by default. */
  measure?: (dir: string) => Promise<FsSpace>;
  now?: number;
  isAlive?: (pid: number) => boolean;
}

/**
 * How long `status` waits for the cache file system's figures before it
 * shows the daemon's own, a few seconds old: the command must answer while
 * a disk does not.
 */
const MEASURE_TIMEOUT_MS = 3000;

/** `--runtime-dir`, else `runtime_dir` in the configuration file (explicit, else the default if it exists), else /run/scratch_manager. */
export function resolveRuntimeDir(flags: StatusFlags): Promise<string> {
  return configuredDir("runtime_dir", flags.runtimeDir, flags.config);
}

/**
 * The cache file system's space now: stat -f of cachedir alone, in a child
 * with a timeout. Not df, nor systeminformation's fsSize() (which runs df):
 * they stat every mount of the node, and one dead NFS server hangs them,
 * and `status` with them, just when an administrator needs it.
 */
async function measureFs(report: StatusReport, measure: (dir: string) => Promise<FsSpace>): Promise<FsSpace> {
  try {
    return await measure(report.cache.dir);
  } catch {
    // The figure the daemon wrote at its last tick is a few seconds old at most.
    return { totalBytes: report.cache.fsTotalBytes, freeBytes: report.cache.fsFreeBytes };
  }
}

/**
 * What `scratch_manager status` prints: the table, or with --json the
 * report plus an `fs` object. Throws UsageError (exit status 1) when the
 * daemon is not running or its status file cannot be used.
 */
export async function statusOutput(flags: StatusFlags, deps: StatusDeps = {}, patterns: readonly string[] = []): Promise<string> {
  const dir = await resolveRuntimeDir(flags);
  let report: StatusReport;
  try {
    report = await readStatusFile(dir, { now: deps.now, isAlive: deps.isAlive });
  } catch (err) {
    // The CLI prints a UsageError as "scratch_manager: <message>", one line, no stack.
    if (err instanceof DaemonNotRunning || err instanceof StatusFileError) throw new UsageError(errorMessage(err), 1);
    throw err;
  }
  const fs = await measureFs(report, deps.measure ?? ((dir) => fsUsage(run, dir, MEASURE_TIMEOUT_MS)));
  const selection = selectStatus(report, patterns, flags.state ?? []);
  if (flags.json === true) {
    const shown = selection ? { ...report, datasets: selection.datasets, refused: selection.refused } : report;
    return `${JSON.stringify({ ...shown, fs, timeZone: localZone(report.writtenAt) }, null, 2)}\n`;
  }
  return renderStatus(report, fs, selection);
}

/** The reader's time zone, which the table's times are in: its name and its offset from UTC at `at` ("+01:00"). */
export function localZone(at: number): { name: string; utcOffset: string } {
  const minutes = -new Date(at).getTimezoneOffset();
  const abs = Math.abs(minutes);
  const utcOffset = `${minutes < 0 ? "-" : "+"}${String(Math.floor(abs / 60)).padStart(2, "0")}:${String(abs % 60).padStart(2, "0")}`;
  return { name: Intl.DateTimeFormat().resolvedOptions().timeZone, utcOffset };
}

/** `scratch_manager status [NAME|GLOB...] [--state STATE] [--json] [--runtime-dir DIR] [-c FILE]`: any user may run it. */
export async function statusCommand(patterns: string[], flags: StatusFlags): Promise<void> {
  try {
    process.stdout.write(await statusOutput(flags, {}, patterns));
  } catch (err) {
    // `pdsh -w node[1-500] scratch_manager status --json | jq` needs a JSON object from every node, a failing one too.
    if (flags.json === true && err instanceof UsageError) process.stdout.write(statusErrorJson(err));
    throw err;
  }
}

/** What `status --json` prints when there is no report to show (exit status 1 all the same). */
export function statusErrorJson(err: Error): string {
  return `${JSON.stringify({ error: err.message })}\n`;
}

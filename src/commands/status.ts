import { run } from "../act/exec.js";
import { configuredDir } from "../config.js";
import { errorMessage, UsageError } from "../errors.js";
import { DaemonNotRunning, readStatusFile, StatusFileError } from "../report/status-file.js";
import type { StatusReport } from "../report/status.js";
import { fsUsage } from "../observe/snapshot.js";
import { renderStatus, type FsSpace } from "../report/table.js";

export interface StatusFlags {
  json?: boolean;
  runtimeDir?: string;
  config?: string;
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
export async function statusOutput(flags: StatusFlags, deps: StatusDeps = {}): Promise<string> {
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
  return flags.json === true ? `${JSON.stringify({ ...report, fs }, null, 2)}\n` : renderStatus(report, fs);
}

/** `scratch_manager status [--json] [--runtime-dir DIR] [-c FILE]`: any user may run it. */
export async function statusCommand(flags: StatusFlags): Promise<void> {
  process.stdout.write(await statusOutput(flags));
}

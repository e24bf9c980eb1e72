import si from "systeminformation";
import { configuredDir } from "../config.js";
import { errorMessage, UsageError } from "../errors.js";
import { DaemonNotRunning, readStatusFile, StatusFileError } from "../report/status-file.js";
import type { StatusReport } from "../report/status.js";
import { renderStatus, type FsSpace } from "../report/table.js";

export interface StatusFlags {
  json?: boolean;
  runtimeDir?: string;
  config?: string;
}

/** A mounted file system, as systeminformation's fsSize() lists it (only the fields used here). */
export interface MountSpace {
  mount: string;
  size: number;
  available: number;
}

export interface StatusDeps {
  /** Lists mounted file systems; systeminformation's fsSize() by default. */
  fsSize?: () => Promise<MountSpace[]>;
  now?: number;
  isAlive?: (pid: number) => boolean;
}

/** The cache file system's space with the mount point it was measured on. */
export interface StatusFs extends FsSpace {
  /** Mount point of the cache directory, when found in the mount list. */
  mount?: string;
}

/** `--runtime-dir`, else `runtime_dir` in the configuration file (explicit, else the default if it exists), else /run/scratch_manager. */
export function resolveRuntimeDir(flags: StatusFlags): Promise<string> {
  return configuredDir("runtime_dir", flags.runtimeDir, flags.config);
}

function isUnder(dir: string, mount: string): boolean {
  return mount === "/" || dir === mount || dir.startsWith(`${mount}/`);
}

/**
 * Space of the file system holding `dir`: the mount point that is the
 * longest prefix of it. Undefined when none matches (the list leaves out
 * some file system types) so the caller falls back to the daemon's figure.
 */
export function cacheFsSpace(dir: string, mounts: readonly MountSpace[]): StatusFs | undefined {
  let best: MountSpace | undefined;
  for (const m of mounts) {
    if (isUnder(dir, m.mount) && (best === undefined || m.mount.length > best.mount.length)) best = m;
  }
  return best && { mount: best.mount, totalBytes: best.size, freeBytes: best.available };
}

async function measureFs(report: StatusReport, fsSize: () => Promise<MountSpace[]>): Promise<StatusFs> {
  let measured: StatusFs | undefined;
  try {
    measured = cacheFsSpace(report.cache.dir, await fsSize());
  } catch {
    // The figure the daemon wrote at its last tick is a few seconds old at
    // most: good enough when df cannot be run.
  }
  return measured ?? { totalBytes: report.cache.fsTotalBytes, freeBytes: report.cache.fsFreeBytes };
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
  const fs = await measureFs(report, deps.fsSize ?? (() => si.fsSize()));
  return flags.json === true ? `${JSON.stringify({ ...report, fs }, null, 2)}\n` : renderStatus(report, fs);
}

/** `scratch_manager status [--json] [--runtime-dir DIR] [-c FILE]`: any user may run it. */
export async function statusCommand(flags: StatusFlags): Promise<void> {
  process.stdout.write(await statusOutput(flags));
}

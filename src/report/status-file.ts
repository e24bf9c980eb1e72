import { mkdir, chmod, readFile } from "node:fs/promises";
import path from "node:path";
import { errnoCode } from "../errors.js";
import { writeFileAtomic } from "../lib/atomic-file.js";
import { formatAge, formatClock } from "./clock.js";
import { STATUS_VERSION, type StatusReport } from "./status.js";
import { systemClock } from "../lib/clock.js";

export const STATUS_FILE_NAME = "status.json";

/**
 * No live daemon behind the status file: there is none, or it is older than
 * a few ticks, or its process is gone. `reason` says which, and since when.
 */
export class DaemonNotRunning extends Error {
  override name = "DaemonNotRunning";
  readonly reason: string;
  /** When the daemon last wrote its status, if it ever did. */
  readonly lastWrittenAt: number | undefined;
  constructor(reason: string, lastWrittenAt?: number) {
    super(`the daemon is not running (${reason})`);
    this.reason = reason;
    this.lastWrittenAt = lastWrittenAt;
  }
}

/** The status file exists but cannot be read or is not a status report of this version. */
export class StatusFileError extends Error {
  override name = "StatusFileError";
  readonly file: string;
  constructor(file: string, problem: string) {
    super(`${file}: ${problem}`);
    this.file = file;
  }
}

export function statusFilePath(dir: string): string {
  return path.join(dir, STATUS_FILE_NAME);
}

/**
 * Rewrite <dir>/status.json atomically (readers never see half a file),
 * mode 0644 so that any user can run `scratch_manager status`. Creates the
 * directory, mode 0755, when missing (systemd's RuntimeDirectory= may
 * already have).
 */
export async function writeStatusFile(dir: string, report: StatusReport, body?: string): Promise<void> {
  const created = await mkdir(dir, { recursive: true, mode: 0o755 });
  // mkdir's mode is masked by the umask; only the directory we created is
  // ours to chmod (an administrator may have chosen the mode of an existing one).
  if (created !== undefined) await chmod(dir, 0o755);
  await writeFileAtomic(statusFilePath(dir), `${body === undefined ? JSON.stringify(report) : withBody(report, body)}\n`, 0o644);
}

/**
 * The fields a quiet tick renews (daemon.ts); the rest of a report is its
 * body, serialized once for the run. Renewed: what may change while the
 * datasets do not (the quiet key), among them what the daemon's background
 * work adds to each tick's report: peer fill, the cache device's SMART
 * health, the Slurm advertiser and the stager (a body kept from the first
 * quiet tick said slurmctld was never told).
 */
const PER_TICK = ["writtenAt", "tick", "storage", "peers", "cacheBytesServed", "cacheDevice", "slurm", "staging"] as const;

/** JSON of a report without its per-tick fields: serialized once for a run of quiet ticks. */
export function statusBody(report: StatusReport): string {
  const perTick: ReadonlySet<string> = new Set(PER_TICK);
  return JSON.stringify(Object.fromEntries(Object.entries(report).filter(([k]) => !perTick.has(k))));
}

/** The JSON of `report`, its body taken as already serialized (statusBody of a report that differs only in the per-tick fields). */
export function withBody(report: StatusReport, body: string): string {
  const head: Record<string, unknown> = {};
  for (const k of PER_TICK) if (report[k] !== undefined) head[k] = report[k];
  const h = JSON.stringify(head);
  return h === "{}" ? body : `${h.slice(0, -1)},${body.slice(1)}`;
}

/** A report older than this means the daemon is gone or stuck: a few ticks, but never less than 15 s. */
export function staleAfterMs(intervalSeconds: number): number {
  return Math.max(3 * intervalSeconds, 15) * 1000;
}

/** kill(pid, 0) checks existence without signalling; EPERM means it exists but belongs to another user (root). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoCode(err) === "EPERM";
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * JSON text -> StatusReport. The file is written by this program, so the
 * check is shallow: enough to reject a truncated or foreign file, or one
 * from a daemon of another format version, with a message naming the file,
 * rather than fail later on a missing field.
 */
export function parseStatusReport(text: string, file: string): StatusReport {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new StatusFileError(file, `not valid JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (!isRecord(parsed)) throw new StatusFileError(file, "not a status report (expected a JSON object)");
  if (parsed.version !== STATUS_VERSION) {
    throw new StatusFileError(
      file,
      `status format version ${JSON.stringify(parsed.version)}, this scratch_manager reads version ${STATUS_VERSION}; run the status command of the same version as the daemon`,
    );
  }
  for (const key of ["pid", "writtenAt", "intervalSeconds", "periodSeconds", "cacheBytesServed"]) {
    if (typeof parsed[key] !== "number") throw new StatusFileError(file, `not a status report (${key} is not a number)`);
  }
  for (const key of ["datasets", "refused", "problems"]) {
    if (!Array.isArray(parsed[key])) throw new StatusFileError(file, `not a status report (${key} is not a list)`);
  }
  for (const key of ["cache", "copies", "tick"]) {
    if (!isRecord(parsed[key])) throw new StatusFileError(file, `not a status report (${key} is not an object)`);
  }
  return parsed as unknown as StatusReport;
}

export interface ReadStatusOptions {
  /** The clock, in ms since the epoch. */
  now?: number;
  /** Whether a process exists; tests replace it. */
  isAlive?: (pid: number) => boolean;
}

/**
 * Read <dir>/status.json and check that a live daemon wrote it recently.
 * Throws DaemonNotRunning (missing, stale, or its process gone) or
 * StatusFileError (unreadable, not JSON, another version).
 */
export async function readStatusFile(dir: string, options: ReadStatusOptions = {}): Promise<StatusReport> {
  const file = statusFilePath(dir);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    const code = errnoCode(err);
    // ENOTDIR: a path component is a file; either way there is no status there.
    if (code === "ENOENT" || code === "ENOTDIR") throw new DaemonNotRunning(`no status file ${file}`);
    throw new StatusFileError(file, `cannot read it (${code ?? String(err)})`);
  }
  const report = parseStatusReport(text, file);
  const now = options.now ?? systemClock.now();
  const isAlive = options.isAlive ?? processAlive;
  const last = `${formatClock(report.writtenAt, now, true)}, ${formatAge(now - report.writtenAt)} ago`;
  if (!isAlive(report.pid)) {
    throw new DaemonNotRunning(`process ${report.pid} has exited; its last status was written at ${last}`, report.writtenAt);
  }
  // A status from the future (clock stepped back) counts as fresh.
  if (now - report.writtenAt > staleAfterMs(report.intervalSeconds)) {
    throw new DaemonNotRunning(
      `process ${report.pid} has written no status since ${last}, though it should every ${report.intervalSeconds} s; it may be stuck`,
      report.writtenAt,
    );
  }
  return report;
}

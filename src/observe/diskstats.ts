import { readFile } from "node:fs/promises";
import path from "node:path";
import { ParseError } from "./parse-error.js";

/**
 * The "sectors read" column of /proc/diskstats counts 512-byte units whatever
 * the device's sector size (Documentation/admin-guide/iostats.rst); the
 * original multiplied by hw_sector_size, which over-counts 4Kn devices.
 */
export const DISKSTATS_SECTOR_BYTES = 512;

/** Bytes read since the device was attached, by device name (e.g. "loop3"). */
export type ReadCounters = Map<string, number>;

export function parseDiskstats(text: string, file = "/proc/diskstats", only: (dev: string) => boolean = () => true): ReadCounters {
  const counters: ReadCounters = new Map();
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? "";
    if (line.trim() === "") continue;
    const fields = line.trim().split(/\s+/);
    const name = fields[2];
    const sectors = Number(fields[5]);
    if (fields.length < 14 || name === undefined || !Number.isSafeInteger(sectors)) {
      throw new ParseError(file, i + 1, "major minor name and at least 11 counters", line);
    }
    if (only(name)) counters.set(name, sectors * DISKSTATS_SECTOR_BYTES);
  }
  return counters;
}

/** major minor name reads merged sectors: the start of a loop device's line. */
const LOOP_LINE = /^ *\d+ +\d+ (loop\d+) \d+ \d+ (\d+) /gm;

/**
 * The loop devices' counters only, of those `wanted`, in one pass of a
 * regular expression over the text: a node with ten thousand images has ten
 * thousand loop devices in /proc/diskstats, most of them not ours or not
 * bound, and splitting every line was the largest part of a quiet tick.
 * Lines that are not loop devices are not looked at (parseDiskstats checks
 * the whole file).
 */
export function parseLoopCounters(text: string, wanted?: ReadonlySet<string>): ReadCounters {
  const counters: ReadCounters = new Map();
  for (const m of text.matchAll(LOOP_LINE)) {
    const name = m[1] as string;
    if (wanted && !wanted.has(name)) continue;
    counters.set(name, Number(m[2]) * DISKSTATS_SECTOR_BYTES);
  }
  return counters;
}

export async function readLoopReadCounters(procRoot = "/proc", wanted?: ReadonlySet<string>): Promise<ReadCounters> {
  const file = path.join(procRoot, "diskstats");
  const text = await readFile(file, "utf8");
  return wanted ? parseLoopCounters(text, wanted) : parseDiskstats(text, file, (dev) => dev.startsWith("loop"));
}

import { readFileSync } from "node:fs";
import { readdir, readlink, stat } from "node:fs/promises";
import path from "node:path";
import type { Runner } from "../lib/exec.js";
import { errnoCode } from "../errors.js";

/**
 * The "sectors read" counter of /sys/block/<dev>/stat (as of /proc/diskstats)
 * counts 512-byte units whatever the device's sector size
 * (Documentation/admin-guide/iostats.rst); the original multiplied by
 * hw_sector_size, which over-counts 4Kn devices.
 */
export const SECTOR_BYTES = 512;

/** Bytes read since the device was attached, by device name (e.g. "loop3"). */
export type ReadCounters = Map<string, number>;

export interface LoopDevice {
  /** "loop3" */
  name: string;
  /** "7:3" */
  majorMinor: string;
  /** Real path of the backing file, without the " (deleted)" suffix. */
  backingFile: string;
  /** The backing file was unlinked (or renamed over) while the device holds it. */
  deleted: boolean;
  sizeBytes: number;
  /**
   * The backing file's device and inode (LOOP_GET_STATUS64), read only when
   * its path says nothing: a file system detached with `umount -l` reports
   * its files' paths from its own root ("/alpha.sqfs").
   */
  backing?: BackingId;
}

export interface BackingId {
  /** st_dev of the backing file, "major:minor". */
  dev: string;
  ino: number;
}

const DELETED = " (deleted)";

/** Parse /sys/block/loopN/loop/backing_file; the kernel appends " (deleted)" to an unlinked file. */
export function parseBackingFile(text: string): { backingFile: string; deleted: boolean } {
  const value = text.replace(/\n$/, "");
  return value.endsWith(DELETED)
    ? { backingFile: value.slice(0, -DELETED.length), deleted: true }
    : { backingFile: value, deleted: false };
}

/**
 * sysfs attributes are made in memory when read: they never wait on a disk,
 * so they are read synchronously. Through the thread pool, each costs four
 * round trips (open, fstat, read, close) and three are read per loop device
 * per tick: with 1,000 datasets that was most of a tick's CPU.
 */
function readOptional(file: string): string | undefined {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    // Detached (no loop/ dir) or gone between readdir and read: not a bound device.
    if (["ENOENT", "ENXIO", "ENODEV"].includes(errnoCode(err) ?? "")) return undefined;
    throw err;
  }
}

/** The loop device whose sysfs directory is `dir`, or undefined if it is not bound. */
function readLoopDir(dir: string, name: string): LoopDevice | undefined {
  const backing = readOptional(path.join(dir, "loop", "backing_file"));
  if (backing === undefined) return undefined;
  const dev = readOptional(path.join(dir, "dev"));
  const size = readOptional(path.join(dir, "size"));
  return {
    name,
    majorMinor: (dev ?? "").trim(),
    ...parseBackingFile(backing),
    // /sys/block/*/size is in 512-byte sectors, like diskstats.
    sizeBytes: Number((size ?? "0").trim()) * 512,
  };
}

/**
 * Every bound loop device, from sysfs. `known` may answer for a device
 * without reading it (the observer's cache of devices held by a mount,
 * which cannot change file while mounted): three sysfs files a device, ten
 * thousand devices, each tick, were most of a quiet tick's CPU.
 */
export async function readLoopDevices(sysRoot = "/sys", known?: (name: string) => LoopDevice | undefined): Promise<LoopDevice[]> {
  const blockDir = path.join(sysRoot, "block");
  const names = (await readdir(blockDir)).filter((n) => /^loop\d+$/.test(n));
  return names.map((name) => known?.(name) ?? readLoopDir(path.join(blockDir, name), name)).filter((d): d is LoopDevice => d !== undefined);
}

/**
 * The bound loop device with this "major:minor", through /sys/dev/block,
 * without reading every other one: the daemon asks after each mount, and a
 * first tick on a node with a thousand images mounts a thousand of them.
 */
export async function readLoopDevice(majorMinor: string, sysRoot = "/sys"): Promise<LoopDevice | undefined> {
  let name: string;
  try {
    name = path.basename(await readlink(path.join(sysRoot, "dev", "block", majorMinor)));
  } catch (err) {
    if (errnoCode(err) === "ENOENT") return undefined;
    throw err;
  }
  return /^loop\d+$/.test(name) ? readLoopDir(path.join(sysRoot, "block", name), name) : undefined;
}

/**
 * "major:minor" of a dev_t as stat() reports it, decoded as glibc's
 * gnu_dev_major and gnu_dev_minor do (12 + 20 bits of major, 8 + 24 of minor).
 */
export function majorMinorOf(dev: bigint): string {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & 0xfffff000n);
  const minor = (dev & 0xffn) | ((dev >> 12n) & 0xffffff00n);
  return `${major}:${minor}`;
}

/**
 * The loop device behind the top mount at `target`, with its read counter
 * now; undefined if it is not a loop mount. stat() of a mount point is the
 * root of the file system on top, and its st_dev is that file system's
 * device: no need to read /proc/self/mountinfo; and the counter comes from
 * the device's own /sys/block/<name>/stat, not /proc/diskstats: either
 * would make each new mount cost O(mounts), and a first start O(n^2).
 */
export async function readLoopAt(target: string, roots: { proc: string; sys: string }): Promise<{ device: LoopDevice; readBytes: number } | undefined> {
  let dev: bigint;
  try {
    ({ dev } = await stat(target, { bigint: true }));
  } catch (err) {
    if (errnoCode(err) === "ENOENT") return undefined;
    throw err;
  }
  const device = await readLoopDevice(majorMinorOf(dev), roots.sys);
  const readBytes = device && readLoopCounter(roots.sys, device.name);
  return device && readBytes !== undefined ? { device, readBytes } : undefined;
}

/** Bytes read through loop device `name` so far, from /sys/block/<name>/stat; undefined if it is gone. */
export function readLoopCounter(sysRoot: string, name: string): number | undefined {
  const text = readOptional(path.join(sysRoot, "block", name, "stat"));
  return text === undefined ? undefined : parseBlockStat(text);
}

/**
 * Bytes read, from /sys/block/<dev>/stat (the fields of /proc/diskstats
 * after the name: the third is sectors read, in 512-byte units).
 */
export function parseBlockStat(text: string): number | undefined {
  const sectors = Number(text.trim().split(/\s+/)[2]);
  return Number.isSafeInteger(sectors) ? sectors * SECTOR_BYTES : undefined;
}

/** `losetup --list --json -O NAME,BACK-MAJ:MIN,BACK-INO` -> device name ("loop3") -> backing device and inode. Pure. */
export function parseLosetupBacking(text: string): Map<string, BackingId> {
  const out = new Map<string, BackingId>();
  if (text.trim() === "") return out;
  const rows = (JSON.parse(text) as { loopdevices?: Record<string, unknown>[] }).loopdevices ?? [];
  for (const row of rows) {
    const name = typeof row.name === "string" ? path.basename(row.name) : undefined;
    const dev = typeof row["back-maj:min"] === "string" ? row["back-maj:min"].trim() : undefined;
    const ino = Number(row["back-ino"]);
    if (name && dev && /^\d+:\d+$/.test(dev) && Number.isSafeInteger(ino)) out.set(name, { dev, ino });
  }
  return out;
}

/**
 * Backing device and inode of these loop devices, through losetup(8): sysfs
 * does not show them, and Node cannot make the ioctl. One `losetup --list`
 * of every device (it takes one device at most: a second name would be read
 * as a file to attach), filtered; only asked when some device's backing path
 * is under neither directory, and remembered by the caller.
 */
export async function readBackingIds(run: Runner, names: readonly string[], timeoutMs: number): Promise<Map<string, BackingId>> {
  if (names.length === 0) return new Map();
  const { stdout } = await run("losetup", ["--list", "--json", "--output", "NAME,BACK-MAJ:MIN,BACK-INO"], { timeoutMs });
  const wanted = new Set(names);
  return new Map([...parseLosetupBacking(stdout)].filter(([name]) => wanted.has(name)));
}

import { readdir, readFile, readlink } from "node:fs/promises";
import path from "node:path";
import pMap from "p-map";
import { READ_CONCURRENCY } from "./concurrency.js";
import { errnoCode } from "../errors.js";
import { readLoopReadCounters } from "./diskstats.js";
import { readMountinfo, stackAt } from "./mountinfo.js";

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
}

const DELETED = " (deleted)";

/** Parse /sys/block/loopN/loop/backing_file; the kernel appends " (deleted)" to an unlinked file. */
export function parseBackingFile(text: string): { backingFile: string; deleted: boolean } {
  const value = text.replace(/\n$/, "");
  return value.endsWith(DELETED)
    ? { backingFile: value.slice(0, -DELETED.length), deleted: true }
    : { backingFile: value, deleted: false };
}

async function readOptional(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, "utf8");
  } catch (err) {
    // Detached (no loop/ dir) or gone between readdir and read: not a bound device.
    if (["ENOENT", "ENXIO", "ENODEV"].includes(errnoCode(err) ?? "")) return undefined;
    throw err;
  }
}

/** The loop device whose sysfs directory is `dir`, or undefined if it is not bound. */
async function readLoopDir(dir: string, name: string): Promise<LoopDevice | undefined> {
  const backing = await readOptional(path.join(dir, "loop", "backing_file"));
  if (backing === undefined) return undefined;
  const [dev, size] = await Promise.all([readOptional(path.join(dir, "dev")), readOptional(path.join(dir, "size"))]);
  return {
    name,
    majorMinor: (dev ?? "").trim(),
    ...parseBackingFile(backing),
    // /sys/block/*/size is in 512-byte sectors, like diskstats.
    sizeBytes: Number((size ?? "0").trim()) * 512,
  };
}

/** Every bound loop device, from sysfs. */
export async function readLoopDevices(sysRoot = "/sys"): Promise<LoopDevice[]> {
  const blockDir = path.join(sysRoot, "block");
  const names = (await readdir(blockDir)).filter((n) => /^loop\d+$/.test(n));
  const devices = await pMap(names, (name) => readLoopDir(path.join(blockDir, name), name), { concurrency: READ_CONCURRENCY });
  return devices.filter((d): d is LoopDevice => d !== undefined);
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

/** The loop device behind the top mount at `target`, with its read counter now; undefined if it is not a loop mount. */
export async function readLoopAt(target: string, roots: { proc: string; sys: string }): Promise<{ device: LoopDevice; readBytes: number } | undefined> {
  const top = stackAt(await readMountinfo(roots.proc), target).at(-1);
  if (!top) return undefined;
  const [device, counters] = await Promise.all([readLoopDevice(top.majorMinor, roots.sys), readLoopReadCounters(roots.proc)]);
  const readBytes = device && counters.get(device.name);
  return device && readBytes !== undefined ? { device, readBytes } : undefined;
}

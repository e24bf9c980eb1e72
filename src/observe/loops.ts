import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
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

/** Every bound loop device, from sysfs. */
export async function readLoopDevices(sysRoot = "/sys"): Promise<LoopDevice[]> {
  const blockDir = path.join(sysRoot, "block");
  const names = (await readdir(blockDir)).filter((n) => /^loop\d+$/.test(n));
  const devices = await Promise.all(
    names.map(async (name): Promise<LoopDevice | undefined> => {
      const dir = path.join(blockDir, name);
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
    }),
  );
  return devices.filter((d): d is LoopDevice => d !== undefined);
}

/** The loop device behind the top mount at `target`, with its read counter now; undefined if it is not a loop mount. */
export async function readLoopAt(target: string, roots: { proc: string; sys: string }): Promise<{ device: LoopDevice; readBytes: number } | undefined> {
  const [mounts, loops, counters] = await Promise.all([readMountinfo(roots.proc), readLoopDevices(roots.sys), readLoopReadCounters(roots.proc)]);
  const top = stackAt(mounts, target).at(-1);
  const device = top && loops.find((l) => l.majorMinor === top.majorMinor);
  const readBytes = device && counters.get(device.name);
  return device && readBytes !== undefined ? { device, readBytes } : undefined;
}

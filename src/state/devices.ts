import { readFile } from "node:fs/promises";
import path from "node:path";
import { errnoCode } from "../errors.js";
import { writeFileAtomic } from "../lib/atomic-file.js";

/**
 * What the daemon remembers of datadir's file system, in
 * <state_dir>/datadir.json, so that a restarted daemon still knows it:
 *
 * - `devices`: the file systems datadir has been on since this machine
 *   booted. A loop device keeps the file it was attached to, on the file
 *   system it was on: after datadir is unmounted and mounted again, its
 *   images are another device's files, and the daemon's old slow mounts are
 *   recognised by their backing device being one of these (plan/layers.ts).
 *   Device numbers are reused after a reboot, when no loop device of the
 *   old boot is left: they count only in the boot that recorded them.
 * - `mountPoint`: datadir was a mount point (its own file system), across
 *   reboots: a file server not mounted at boot leaves the empty directory
 *   beneath, which must not be taken for every image deleted.
 */
const FILE = "datadir.json";

export interface DatadirMemory {
  /** Devices ("major:minor", oldest first) of this boot. */
  devices: string[];
  mountPoint: boolean;
}

export function bootIdFile(procRoot: string): string {
  return path.join(procRoot, "sys", "kernel", "random", "boot_id");
}

export async function readBootId(procRoot: string): Promise<string> {
  return (await readFile(bootIdFile(procRoot), "utf8")).trim();
}

/** What was recorded; nothing if there is no file or it is damaged (it only costs a recognition). */
export async function readDatadirMemory(stateDir: string, bootId: string): Promise<DatadirMemory> {
  let text: string;
  try {
    text = await readFile(path.join(stateDir, FILE), "utf8");
  } catch (err) {
    if (errnoCode(err) === "ENOENT") return { devices: [], mountPoint: false };
    throw err;
  }
  try {
    const data = JSON.parse(text) as { bootId?: unknown; devices?: unknown; mountPoint?: unknown };
    const devices = data.bootId === bootId && Array.isArray(data.devices) ? data.devices.filter((d): d is string => typeof d === "string" && /^\d+:\d+$/.test(d)) : [];
    return { devices, mountPoint: data.mountPoint === true };
  } catch {
    return { devices: [], mountPoint: false };
  }
}

export async function writeDatadirMemory(stateDir: string, bootId: string, memory: DatadirMemory): Promise<void> {
  await writeFileAtomic(path.join(stateDir, FILE), `${JSON.stringify({ bootId, ...memory })}\n`, 0o644);
}

import { readFileSync } from "node:fs";
import { mkdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { errnoCode } from "../errors.js";
import { writeFileAtomic } from "../lib/atomic-file.js";
import type { LoopDevice } from "../observe/loops.js";
import type { Runner } from "../lib/exec.js";

/**
 * Attach, mount, unmount, through util-linux.
 *
 * `mount -o loop` looks for an attached loop device backed by the same file
 * before it attaches one (libmount's overlap check opens every loop device):
 * with thousands attached, a first start was quadratic (BENCHMARKS.md). The
 * daemon knows which devices back which files, so it attaches itself:
 * `losetup --find` takes a free device from /dev/loop-control in O(1),
 * `mount` mounts that device, and `losetup --detach` right after lets the
 * kernel release the device with its last mount. A device still in use
 * cannot be detached: the kernel sets autoclear on it instead. So whatever
 * the outcome of the mount (done, failed, cut by the timeout, or landing
 * later), no loop device outlives its mount. A crash between attach and
 * detach is covered by the journal below.
 */

/**
 * ro,nosuid,nodev always: anyone who can write into datadir must not be able
 * to bring a setuid binary or a device node onto every node.
 */
export async function attachAndMount(run: Runner, fsType: string, source: string, target: string, timeoutMs: number): Promise<string> {
  const { stdout } = await run("losetup", ["--find", "--show", "--read-only", "--", source], { timeoutMs });
  const device = stdout.trim();
  if (!/^\/dev\/loop\d+$/.test(device)) throw new Error(`losetup --find --show printed ${JSON.stringify(stdout)} for ${source}`);
  try {
    await run("mount", ["-t", fsType, "-o", "ro,nosuid,nodev", "--", device, target], { timeoutMs });
  } finally {
    await run("losetup", ["--detach", device], { timeoutMs });
  }
  return device;
}

/**
 * Sets ro,nosuid,nodev on the mount at `target` in place: a bind remount
 * changes only the mount's own flags, so its ID, its loop device and the
 * files open on it are kept (a mount made by the original's plain `mount FILE DIR`).
 */
export async function hardenMount(run: Runner, target: string, timeoutMs: number): Promise<void> {
  await run("mount", ["-o", "remount,bind,ro,nosuid,nodev", "--", target], { timeoutMs });
}

/**
 * Lazy, as the original: readers of open files keep reading the mount they
 * opened, new opens see what lies beneath. Only the top mount at the path is
 * detached, which is why the diff unmounts stacks from the top.
 */
export async function lazyUnmount(run: Runner, target: string, timeoutMs: number): Promise<void> {
  await run("umount", ["--lazy", "--", target], { timeoutMs });
}

/**
 * The files being attached, in <runtime_dir>/attaching.json, written before
 * a tick's mounts and removed after: a daemon killed between `losetup` and
 * its `--detach` leaves a device attached with no autoclear, which the next
 * start releases (releaseUnfinished). Only devices backed by these files are
 * touched: a loop device an administrator attached by hand is not ours.
 */
export class AttachJournal {
  constructor(private readonly runtimeDir: string) {}

  get file(): string {
    return path.join(this.runtimeDir, "attaching.json");
  }

  async begin(sources: readonly string[]): Promise<void> {
    if (sources.length === 0) return;
    await mkdir(this.runtimeDir, { recursive: true, mode: 0o755 });
    await writeFileAtomic(this.file, `${JSON.stringify(sources)}\n`, 0o644);
  }

  async end(): Promise<void> {
    await rm(this.file, { force: true });
  }

  /** The files of an interrupted tick, if the previous daemon died during one. */
  async unfinished(): Promise<string[]> {
    try {
      const data: unknown = JSON.parse(await readFile(this.file, "utf8"));
      return Array.isArray(data) ? data.filter((f): f is string => typeof f === "string") : [];
    } catch (err) {
      if (errnoCode(err) === "ENOENT") return [];
      // A damaged journal: nothing can be released with certainty.
      return [];
    }
  }
}

/** /sys/block/<name>/loop/autoclear: "1" once detached while in use (or attached by mount -o loop). */
function autoclear(sysRoot: string, name: string): boolean {
  try {
    return readFileSync(path.join(sysRoot, "block", name, "loop", "autoclear"), "utf8").trim() === "1";
  } catch {
    return true;
  }
}

/**
 * After a crash between attach and detach: the devices backed by a file of
 * the journal that have no autoclear are detached (one not mounted is
 * released at once; one mounted gets autoclear, as if the tick had ended).
 * Returns the devices released.
 */
export async function releaseUnfinished(run: Runner, journal: AttachJournal, loops: readonly LoopDevice[], sysRoot: string, timeoutMs: number): Promise<string[]> {
  const files = new Set(await journal.unfinished());
  const released: string[] = [];
  for (const loop of loops) {
    if (!files.has(loop.backingFile) || autoclear(sysRoot, loop.name)) continue;
    await run("losetup", ["--detach", `/dev/${loop.name}`], { timeoutMs });
    released.push(loop.name);
  }
  await journal.end();
  return released;
}

/**
 * One atomic copy (or the `cat` baseline), in a process of its own that
 * joins the throttled cgroup first, so that every method is measured the
 * same way: from inside the group, from the start of the copy to the
 * directory fsync after the rename.
 *
 *   node build/bench/testbed/copier.js CGROUP_PROCS METHOD SOURCE DEST
 *
 * Every method does what src/act/transfers.ts does around rsync: write a
 * temporary name next to DEST, fsync it, rename, fsync the directory; the
 * copy keeps the image's mtime (the daemon verifies size and mtime). Prints
 * one JSON line: { method, bytes, ms, toolMs, syncMs }.
 *
 * "+flush" variants also flush the temporary file while the copy runs
 * (fdatasync in a loop, on a descriptor of our own): the page cache then
 * writes the copy back as it is made, instead of all at once in the final
 * fsync, which on a machine with much RAM (dirty_background_ratio = 10% of
 * 24 GiB here) would otherwise find nearly the whole copy still dirty.
 */
import { copyFile, rename, stat, unlink, utimes, writeFile } from "node:fs/promises";
import path from "node:path";
import { flushWhile, fsyncFile } from "../../src/act/transfers.js";
import { runToNull } from "./exec.js";
import { cpuTicks, ticksPerSecond } from "./proc.js";

export const METHODS = ["cat", "rsync", "rsync+flush", "cp", "cp+flush", "copyfile", "copyfile+flush"] as const;
export type Method = (typeof METHODS)[number];

export interface CopyTiming {
  method: Method;
  bytes: number;
  /** From the start of the copy to the end of the directory fsync. */
  ms: number;
  /** The copy itself (rsync, cp, copyFile, cat). */
  toolMs: number;
  /** fsync of the file, rename, fsync of the directory. */
  syncMs: number;
  /**
   * CPU seconds (user + system) of this process and of the programs it ran
   * (rsync's receiver included: rsync waits for it), over the whole copy.
   * Not the kernel's writeback and loop-device workers, which are the same
   * for every method. Resolution: one clock tick.
   */
  cpuS: number;
}

/** What the daemon passes to rsync (src/act/transfers.ts), with the default command_timeout. */
export const RSYNC_ARGS = ["--inplace", "--times", "--timeout=60"];
export const CP_ARGS = ["--reflink=auto", "--preserve=timestamps"];



export async function copyOnce(method: Method, source: string, dest: string): Promise<CopyTiming> {
  const { size, mtime, atime } = await stat(source);
  const hz = await ticksPerSecond();
  // This process and its reaped children: the copy tool's CPU too.
  const cpuTicksNow = () => cpuTicks("self", true);
  const cpuBefore = await cpuTicksNow();
  const started = performance.now();
  if (method === "cat") {
    const ms = await runToNull("cat", [source]);
    return { method, bytes: size, ms, toolMs: ms, syncMs: 0, cpuS: ((await cpuTicksNow()) - cpuBefore) / hz };
  }
  const tmp = path.join(path.dirname(dest), `.${path.basename(dest)}.partial`);
  await unlink(tmp).catch(() => undefined);
  const base = method.replace("+flush", "");
  let copying: Promise<unknown>;
  switch (base) {
    case "rsync":
      copying = runToNull("rsync", [...RSYNC_ARGS, "--", source, tmp]);
      break;
    case "cp":
      copying = runToNull("cp", [...CP_ARGS, "--", source, tmp]);
      break;
    case "copyfile":
      // libuv: copy_file_range(2), and sendfile(2) where the kernel refuses a cross-file-system copy_file_range (EXDEV).
      copying = copyFile(source, tmp).then(() => utimes(tmp, atime, mtime));
      break;
    default:
      throw new Error(`copier: unknown method ${method}`);
  }
  if (method.endsWith("+flush")) await Promise.all([copying, flushWhile(tmp, copying)]);
  else await copying;
  const copied = performance.now();
  await fsyncFile(tmp);
  const st = await stat(tmp);
  if (st.size !== size || Math.floor(st.mtimeMs / 1000) !== Math.floor(mtime.getTime() / 1000)) {
    throw new Error(`copier: ${method}: copy does not match (size ${st.size} vs ${size}, mtime ${st.mtimeMs} vs ${mtime.getTime()})`);
  }
  await rename(tmp, dest);
  await fsyncFile(path.dirname(dest));
  const end = performance.now();
  return { method, bytes: size, ms: end - started, toolMs: copied - started, syncMs: end - copied, cpuS: ((await cpuTicksNow()) - cpuBefore) / hz };
}

function isMethod(s: string | undefined): s is Method {
  return (METHODS as readonly (string | undefined)[]).includes(s);
}

async function main(argv: readonly string[]): Promise<number> {
  const [procs, method, source, dest] = argv;
  if (!procs || !isMethod(method) || !source || (method !== "cat" && !dest)) {
    console.error(`usage: copier.js CGROUP_PROCS (${METHODS.join("|")}) SOURCE [DEST]`);
    return 2;
  }
  // Join the throttled group before the first read; cgroup v1 moves every thread of the process.
  await writeFile(procs, String(process.pid));
  const timing = await copyOnce(method, source, dest ?? "");
  console.log(JSON.stringify(timing));
  return 0;
}

if (process.argv[1] && import.meta.url === new URL(`file://${path.resolve(process.argv[1])}`).href) {
  process.exitCode = await main(process.argv.slice(2));
}

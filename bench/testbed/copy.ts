/**
 * Item 2 of issue 6: bytes per second of filling the cache with one large
 * image, against `cat image > /dev/null` of the same file from the slow
 * tier with a cold page cache, in the same run. Measured for the real
 * daemon (rsync, fsync, verify, rename: its "copy finished" log line), and
 * for each candidate copier run the same atomic way (copier.ts). The
 * methods' order rotates from one repetition to the next, so that no method
 * always runs right after another's writeback.
 */
import { mkdir, rm } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Bed, GiB, MiB } from "./bed.js";
import { METHODS, type CopyTiming, type Method } from "./copier.js";
import { Daemon, resetDaemon, type DaemonDirs } from "./daemon.js";
import { runJsonChild } from "./exec.js";
import { fixed, markdownTable, median, mibps } from "../stats.js";

const COPIER = path.join(path.dirname(fileURLToPath(import.meta.url)), "copier.js");

export type CopyMethod = Method | "daemon";

export interface CopyRun {
  method: CopyMethod;
  rep: number;
  bytes: number;
  ms: number;
  toolMs: number;
  syncMs: number;
  cpuS: number;
}

export interface CopyPhase {
  label: string;
  throttleBps: number;
  runs: CopyRun[];
  table: string;
}

/** Runs the copier in a fresh process that joins the group itself, then parses its one JSON line. */
function runCopier(bed: Bed, method: Method, source: string, dest: string): Promise<CopyTiming> {
  return runJsonChild<CopyTiming>(COPIER, [path.join(bed.cgroup, "cgroup.procs"), method, source, dest]);
}

/** The real daemon, one pinned image: from its "copy started" to its "copy finished" (rsync, fsync, verify, rename). */
async function daemonCopy(bed: Bed, dirs: DaemonDirs, name: string, rep: number): Promise<CopyRun> {
  await resetDaemon(bed, dirs);
  await bed.dropCaches();
  const daemon = await Daemon.start(bed, dirs, { capacity: "8GB", interval: "1", period: "60", pin: name, max_copies: "1", command_timeout: "60" }, `copy-${rep}`);
  try {
    const started = await daemon.waitFor((e) => e.msg === "copy started" && e.dataset === name, 60_000, "copy started");
    const finished = await daemon.waitFor((e) => (e.msg === "copy finished" || e.msg === "copy failed") && e.dataset === name, 600_000, "copy finished");
    if (finished.msg !== "copy finished") throw new Error(`daemon: copy failed: ${JSON.stringify(finished)}`);
    const bytes = finished.bytes ?? 0;
    const ms = finished.ms ?? finished.t - started.t;
    return { method: "daemon", rep, bytes, ms, toolMs: NaN, syncMs: NaN, cpuS: NaN };
  } finally {
    await daemon.stop();
    await resetDaemon(bed, dirs);
  }
}

export interface CopySuiteOptions {
  /** The image to copy, on the slow tier, alone in its directory (the daemon's datadir). */
  image: string;
  /** Where the copiers write (a directory of the fast tier). */
  destDir: string;
  /** The daemon's cache and mount directories. */
  cachedir: string;
  mountdir: string;
  reps: number;
  /** Read throttles to run the comparison at; 0: none (the machine's own ceiling). */
  throttles: readonly number[];
  progress: (line: string) => void;
}

export async function copySuite(bed: Bed, o: CopySuiteOptions): Promise<CopyPhase[]> {
  const methods: CopyMethod[] = ["cat", "daemon", ...METHODS.filter((m) => m !== "cat")];
  const dirs: DaemonDirs = { datadir: path.dirname(o.image), cachedir: o.cachedir, mountdir: o.mountdir };
  const name = path.basename(o.image).replace(/\..*$/, "");
  const dest = path.join(o.destDir, path.basename(o.image));
  const phases: CopyPhase[] = [];
  await mkdir(o.destDir, { recursive: true });
  for (const throttle of o.throttles) {
    await bed.throttle(throttle);
    const runs: CopyRun[] = [];
    for (let rep = 0; rep < o.reps; rep++) {
      const order = methods.map((_, i) => methods[(i + rep * 3) % methods.length] as CopyMethod);
      for (const method of order) {
        let r: CopyRun;
        if (method === "daemon") r = await daemonCopy(bed, dirs, name, rep);
        else {
          await rm(dest, { force: true });
          await bed.dropCaches();
          r = { ...(await runCopier(bed, method, o.image, dest)), rep };
          await rm(dest, { force: true });
        }
        runs.push(r);
        o.progress(`  ${throttle ? `${fixed(throttle / MiB)} MiB/s` : "unthrottled"} rep ${rep + 1}/${o.reps} ${method}: ${fixed(mibps(r.bytes, r.ms))} MiB/s (${fixed(r.ms / 1000, 2)} s)`);
      }
    }
    const label = throttle ? `slow tier throttled to ${fixed(throttle / MiB)} MiB/s` : "slow tier unthrottled (the loop device on the machine's disk)";
    phases.push({ label, throttleBps: throttle, runs, table: copyTable(methods, runs, o.reps) });
  }
  return phases;
}

function copyTable(methods: readonly CopyMethod[], runs: readonly CopyRun[], reps: number): string {
  const rateOf = (m: CopyMethod): number[] => runs.filter((r) => r.method === m).map((r) => mibps(r.bytes, r.ms));
  // Against the median of the cat runs of the same phase: one cat per repetition, interleaved with the copies.
  const cat = median(rateOf("cat"));
  const rows = methods.map((m) => {
    const mine = runs.filter((r) => r.method === m);
    const rates = rateOf(m);
    return [
      m === "daemon" ? "**the daemon** (its copy, from its log)" : m,
      fixed(median(rates)),
      `${fixed(Math.min(...rates))}–${fixed(Math.max(...rates))}`,
      m === "cat" ? "1" : fixed(median(rates) / cat, 2),
      fixed(median(mine.map((r) => r.toolMs)) / 1000, 2),
      fixed(median(mine.map((r) => r.syncMs)) / 1000, 2),
      fixed(median(mine.map((r) => (r.cpuS * GiB) / r.bytes)), 2),
    ];
  });
  return markdownTable([`method (${reps} runs each)`, "MiB/s, median", "min–max", "÷ cat", "copy s", "fsync + rename s", "CPU s per GiB"], rows);
}

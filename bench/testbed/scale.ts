/**
 * Item 4 of issue 6, on real mounts: the daemon's CPU per tick and its
 * memory with N datasets mounted through N loop devices (200 and 1,000).
 *
 * One small squashfs image is built and copied N times into datadir (the
 * daemon treats each copy as its own dataset). The daemon runs with
 * `interval` 0.5 s and `period` 120 s: 240 samples per window, as with the
 * defaults (5 s, 1200 s), so that its windows are as large as in production
 * and full after two minutes instead of twenty. Once every dataset is
 * mounted and the windows are full, CPU is read from /proc/PID/stat (user +
 * system, the daemon alone: observing spawns no program) over a number of
 * ticks, and memory from /proc/PID/status (VmRSS now, VmHWM the peak). The
 * datasets are not read, so no copy runs: a tick is then observe, plan and
 * diff, with nothing to do, which is the steady state of a node.
 */
import { copyFile, mkdir, readFile } from "node:fs/promises";
import path from "node:path";
import { Bed, MiB } from "./bed.js";
import { Daemon, resetDaemon, type DaemonDirs } from "./daemon.js";
import { sleep } from "./exec.js";
import { makeImage } from "./images.js";
import { cpuTicks, ticksPerSecond } from "./proc.js";
import { fixed, markdownTable, median, percentile } from "../stats.js";

export const SCALE = {
  counts: (process.env.SM_SCALE_COUNTS ?? "200,1000").split(",").map(Number),
  intervalS: 0.5,
  periodS: Number(process.env.SM_SCALE_PERIOD ?? 120),
  /** Ticks over which CPU is measured, once the windows are full. */
  ticks: 60,
} as const;

/** User + system CPU seconds of the daemon so far: observing spawns no program. */
async function cpuSeconds(pid: number): Promise<number> {
  return (await cpuTicks(pid, false)) / (await ticksPerSecond());
}

async function memoryMiB(pid: number): Promise<{ rss: number; hwm: number }> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN);
  return { rss: kib("VmRSS") / 1024, hwm: kib("VmHWM") / 1024 };
}

export interface ScaleRun {
  datasets: number;
  mountS: number;
  cpuMsPerTick: number;
  tickMs: { p50: number; p99: number; max: number };
  rssMiB: number;
  hwmMiB: number;
}

async function measure(bed: Bed, root: string, n: number, progress: (line: string) => void): Promise<ScaleRun> {
  const base = path.join(root, `scale-${n}`);
  const dirs: DaemonDirs = { datadir: path.join(base, "data"), cachedir: path.join(base, "cache"), mountdir: path.join(base, "mnt") };
  for (const d of Object.values(dirs)) await mkdir(d, { recursive: true });
  const image = path.join(base, "one.sqfs");
  await makeImage(image, MiB, "scale");
  for (let i = 0; i < n; i++) await copyFile(image, path.join(dirs.datadir, `s${String(i).padStart(4, "0")}.sqfs`));
  const daemon = await Daemon.start(bed, dirs, { capacity: "1GB", interval: String(SCALE.intervalS), period: String(SCALE.periodS), command_timeout: "120" }, `scale-${n}`);
  try {
    const pid = daemon.pid;
    if (pid === undefined) throw new Error("scale: the daemon has no pid");
    const started = performance.now();
    const mounted = () => daemon.events.filter((e) => e.msg === "mounted image").length;
    const report = setInterval(() => progress(`  ${mounted()} of ${n} mounted`), 10_000);
    try {
      await daemon.waitFor(() => mounted() >= n, 600_000, `${n} mounts`);
    } finally {
      clearInterval(report);
    }
    const mountS = (performance.now() - started) / 1000;
    progress(`  ${n} datasets mounted in ${fixed(mountS, 1)} s; filling the windows (${SCALE.periodS} s)`);
    await sleep(SCALE.periodS * 1000);
    const ticksBefore = daemon.events.filter((e) => e.msg === "tick").length;
    const cpuBefore = await cpuSeconds(pid);
    await daemon.waitFor(() => daemon.events.filter((e) => e.msg === "tick").length >= ticksBefore + SCALE.ticks, 600_000, `${SCALE.ticks} ticks`);
    const cpuAfter = await cpuSeconds(pid);
    const ticks = daemon.events.filter((e) => e.msg === "tick").slice(ticksBefore, ticksBefore + SCALE.ticks);
    const tickMs = ticks.map((e) => Number(e.ms));
    const mem = await memoryMiB(pid);
    const problems = daemon.problems();
    if (problems.length > 0) progress(`  daemon problems: ${problems.map((e) => e.msg).join("; ")}`);
    return {
      datasets: n,
      mountS,
      cpuMsPerTick: ((cpuAfter - cpuBefore) * 1000) / SCALE.ticks,
      tickMs: { p50: median(tickMs), p99: percentile(tickMs, 99), max: Math.max(...tickMs) },
      rssMiB: mem.rss,
      hwmMiB: mem.hwm,
    };
  } finally {
    await daemon.stop();
    progress(`  unmounting ${n} datasets`);
    await resetDaemon(bed, dirs);
  }
}

export async function scaleSuite(bed: Bed, root: string, progress: (line: string) => void): Promise<string> {
  const runs: ScaleRun[] = [];
  for (const n of SCALE.counts) {
    progress(`testbed: scale, ${n} datasets`);
    runs.push(await measure(bed, root, n, progress));
  }
  const table = markdownTable(
    ["datasets mounted", "time to mount them all", "daemon CPU per tick (user + system)", "tick duration p50 / p99 / max (the tick's own `ms`)", "daemon RSS", "daemon peak RSS (VmHWM)"],
    runs.map((r) => [
      String(r.datasets),
      `${fixed(r.mountS, 1)} s`,
      `${fixed(r.cpuMsPerTick, 1)} ms`,
      `${fixed(r.tickMs.p50, 1)} / ${fixed(r.tickMs.p99, 1)} / ${fixed(r.tickMs.max, 1)} ms`,
      `${fixed(r.rssMiB, 1)} MiB`,
      `${fixed(r.hwmMiB, 1)} MiB`,
    ]),
  );
  return `interval ${SCALE.intervalS} s, period ${SCALE.periodS} s (240 samples per window, as with the defaults), CPU over ${SCALE.ticks} ticks once the windows were full; no dataset read.\n\n${table}`;
}

/**
 * Item 3 of issue 6: does the loop keep ticking while two large copies run?
 * The real daemon, two pinned images, max_copies = 2, --verbose: each tick
 * logs one "tick" line with its time. The figures are the intervals between
 * consecutive tick lines whose both ends fall while both copies run.
 */
import path from "node:path";
import { Bed, MiB } from "./bed.js";
import { Daemon, resetDaemon, type DaemonDirs } from "./daemon.js";
import { fixed, markdownTable, median, mibps, percentile } from "../stats.js";

export interface LoopRun {
  intervalS: number;
  throttleBps: number;
  /** Tick-to-tick intervals while both copies ran, seconds. */
  gaps: number[];
  /** Each of those ticks' own duration (its "ms" field), seconds. */
  tickS: number[];
  copies: { dataset: string; bytes: number; ms: number }[];
  blkioGroup: string;
  p50: number;
  p99: number;
  max: number;
  meets: boolean;
}

export interface LoopOptions {
  /** Two images, alone in their directory (the daemon's datadir). */
  images: readonly [string, string];
  cachedir: string;
  mountdir: string;
  intervalS: number;
  /** One run per throttle; 0: none (the copies then take all the CPU they can). */
  throttles: readonly number[];
}

async function loopOnce(bed: Bed, o: LoopOptions, throttleBps: number, label: string): Promise<LoopRun> {
  const dirs: DaemonDirs = { datadir: path.dirname(o.images[0]), cachedir: o.cachedir, mountdir: o.mountdir };
  const names = o.images.map((f) => path.basename(f).replace(/\..*$/, ""));
  await resetDaemon(bed, dirs);
  await bed.throttle(throttleBps);
  await bed.dropCaches();
  const daemon = await Daemon.start(
    bed,
    dirs,
    { capacity: "8GB", interval: String(o.intervalS), period: "60", pin: names.join(","), max_copies: "2", command_timeout: "60" },
    label,
  );
  let finished;
  try {
    const done = (name: string) => daemon.waitFor((e) => (e.msg === "copy finished" || e.msg === "copy failed") && e.dataset === name, 900_000, `copy of ${name}`);
    finished = await Promise.all(names.map(done));
    // One more tick after the copies, so that the last interval is closed.
    const last = Math.max(...finished.map((e) => e.t));
    await daemon.waitFor((e) => e.msg === "tick" && e.t > last, 30_000, "a tick after the copies");
  } finally {
    await daemon.stop();
    await resetDaemon(bed, dirs);
  }
  const failed = finished.filter((e) => e.msg !== "copy finished");
  if (failed.length > 0) throw new Error(`loop: copy failed: ${JSON.stringify(failed)}`);
  const started = daemon.events.filter((e) => e.msg === "copy started");
  const from = Math.max(...started.map((e) => e.t));
  const to = Math.min(...finished.map((e) => e.t));
  const ticks = daemon.events.filter((e) => e.msg === "tick");
  const gaps: number[] = [];
  const tickS: number[] = [];
  for (let i = 1; i < ticks.length; i++) {
    const a = ticks[i - 1];
    const b = ticks[i];
    // An interval counts if it ends while both copies run; the one that a copy's end cuts short is left out.
    if (!a || !b || b.t < from || b.t > to) continue;
    gaps.push((b.t - a.t) / 1000);
    tickS.push((b.ms ?? NaN) / 1000);
  }
  const p99 = percentile(gaps, 99);
  return {
    intervalS: o.intervalS,
    throttleBps,
    gaps,
    tickS,
    copies: finished.map((e) => ({ dataset: e.dataset ?? "?", bytes: e.bytes ?? 0, ms: e.ms ?? 0 })),
    blkioGroup: daemon.blkioGroup,
    p50: percentile(gaps, 50),
    p99,
    max: Math.max(...gaps),
    meets: p99 <= o.intervalS + 0.5,
  };
}

export async function loopSuite(bed: Bed, o: LoopOptions): Promise<{ runs: LoopRun[]; table: string }> {
  const runs: LoopRun[] = [];
  for (const [i, throttle] of o.throttles.entries()) runs.push(await loopOnce(bed, o, throttle, `loop-${i}`));
  const table = markdownTable(
    ["slow tier", "each copy", "interval", "intervals while both copies ran", "p50", "p99", "max", `goal: p99 ≤ interval + 0.5 s`, "tick's own work, p50 / max"],
    runs.map((r) => [
      r.throttleBps ? `${fixed(r.throttleBps / MiB)} MiB/s` : "unthrottled",
      r.copies.map((c) => `${fixed(mibps(c.bytes, c.ms))} MiB/s`).join(", "),
      `${r.intervalS} s`,
      String(r.gaps.length),
      `${fixed(r.p50, 3)} s`,
      `${fixed(r.p99, 3)} s`,
      `${fixed(r.max, 3)} s`,
      r.meets ? "met" : "**missed**",
      `${fixed(median(r.tickS) * 1000)} / ${fixed(Math.max(...r.tickS) * 1000)} ms`,
    ]),
  );
  return { runs, table };
}

/**
 * Item 6 of issue 6: one trace replayed on the real testbed, next to the
 * simulator (bench/sim/engine.ts) run on the same trace with the same
 * parameters, to show whether the simulator agrees with reality.
 *
 * Real side: the daemon, and one reader process per job (reader.ts), all in
 * one blkio group: the throttle is then one link shared by the jobs' slow
 * reads and the daemon's copies, as the simulator models it. Three testbed
 * artefacts are removed, because the datasets (MiB) fit in the page cache
 * when real ones (TiB) do not: readers drop each file's pages after reading
 * it; every loop device the daemon attaches is switched to direct I/O
 * (`losetup --direct-io=on`), so that its backing file is not cached
 * either; and an image's pages, which rsync reads through the page cache,
 * are dropped when its copy ends, or a second copy of it after an eviction
 * would come from memory in no time. Bytes served per tier are the loop devices' read counters
 * (/proc/diskstats), as the daemon reads them.
 *
 * The daemon runs twice, with `policy = adaptive` (ours) and `policy =
 * original`. Simulated side: simulate() with OursPolicy and OriginalPolicy,
 * which run the daemon's own plan() over the windows Stats keeps
 * (src/plan), so that each real run has its simulated twin.
 */
import { mkdir, readFile, readdir, stat } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { simulate, type Decision, type PolicyView, type SimConfig, type SimPolicy, type SimResult } from "../sim/engine.js";
import { OursPolicy } from "../sim/ours.js";
import { OriginalPolicy } from "../sim/policies.js";
import type { PolicyName } from "../../src/config.js";
import type { SimJob, Trace } from "../sim/trace.js";
import { Bed, GiB, MiB } from "./bed.js";
import { Daemon, resetDaemon, type DaemonDirs } from "./daemon.js";
import { run, runJsonChild, sleep } from "./exec.js";
import { makeImage } from "./images.js";
import type { ReaderResult } from "./reader.js";
import { fixed, markdownTable } from "../stats.js";

const READER = path.join(path.dirname(fileURLToPath(import.meta.url)), "reader.js");

/** Every dataset is made of files of this size: a job's next open after the overmount reads the cache. */
const FILE_BYTES = 16 * MiB;

/**
 * A small trace, on the scale of the testbed: four datasets, eight jobs in
 * 52 s, asking more than the slow tier gives most of the time. d000 is read
 * often (a popular training set), d002 once (a scan), d001 and d003 in
 * between.
 */
export const MINI = {
  sizes: [192 * MiB, 128 * MiB, 256 * MiB, 96 * MiB],
  /** start s, dataset, rate MiB/s, epochs */
  jobs: [
    [0, 0, 48, 4],
    [0, 1, 32, 3],
    [8, 2, 48, 1],
    [20, 0, 48, 3],
    [28, 3, 32, 4],
    [36, 1, 32, 3],
    [44, 0, 48, 2],
    [52, 3, 32, 3],
  ] as const,
  capacity: 320 * MiB,
  slowBandwidth: 64 * MiB,
  /** The fast tier is never the bottleneck at these rates; the simulator needs a figure. */
  cacheBandwidth: 1 * GiB,
  intervalS: 1,
  periodS: 20,
  maxCopies: 2,
} as const;

/**
 * The trace for the simulator. `imageSizes` are the sizes of the images as
 * built (the data plus squashfs's few KiB of metadata): the capacity must be
 * weighed against the same sizes on both sides, or a pair of datasets that
 * fills the capacity exactly in the simulator does not fit on the testbed.
 * A job reads `epochs` times the dataset's data.
 */
export function miniTrace(imageSizes: readonly number[]): Trace {
  const jobs: SimJob[] = MINI.jobs.map(([start, dataset, rate, epochs]) => ({
    start,
    dataset,
    rate: rate * MiB,
    bytes: epochs * (MINI.sizes[dataset] as number),
    kind: epochs > 1 ? "train" : "scan",
  }));
  // The simulator uses the name only in its result's label.
  return { name: "steady", seed: 0, sizes: [...imageSizes], jobs, horizon: 52 };
}

const datasetName = (i: number): string => `d${String(i).padStart(3, "0")}`;

/** Builds the trace's images in datadir; returns their sizes. Needs mksquashfs, not root. */
export async function buildImages(datadir: string): Promise<number[]> {
  await mkdir(datadir, { recursive: true });
  const sizes: number[] = [];
  for (const [i, size] of MINI.sizes.entries()) {
    const file = path.join(datadir, `${datasetName(i)}.sqfs`);
    await makeImage(file, size, datasetName(i), Math.ceil(size / FILE_BYTES));
    sizes.push((await stat(file)).size);
  }
  return sizes;
}

/** What happened to the cache, in order: "12 s copy d000", "19 s cached d000", "40 s evicted d001". */
type Timeline = string[];

/**
 * Records, from what the simulator shows the policy each tick, when copies
 * start, when they are mounted, and when cached copies go: the same events
 * the daemon logs, for the side-by-side timeline.
 */
class Recording implements SimPolicy {
  readonly timeline: Timeline = [];
  private copying = new Set<string>();
  private cached = new Set<string>();

  constructor(private readonly inner: SimPolicy) {}

  get name(): string {
    return this.inner.name;
  }

  observe(nowMs: number, index: number, slowBytes: number, cacheBytes: number): void {
    this.inner.observe(nowMs, index, slowBytes, cacheBytes);
  }

  decide(view: PolicyView): Decision {
    const t = `${fixed(view.nowMs / 1000)} s`;
    const cached = new Set(view.datasets.filter((d) => d.cache === "valid").map((d) => d.name));
    for (const name of cached) if (!this.cached.has(name)) this.timeline.push(`${t} cached ${name}`);
    for (const name of this.cached) if (!cached.has(name)) this.timeline.push(`${t} evicted ${name}`);
    for (const name of view.copying.keys()) if (!this.copying.has(name) && !cached.has(name)) this.timeline.push(`${t} copy ${name}`);
    this.cached = cached;
    this.copying = new Set(view.copying.keys());
    return this.inner.decide(view);
  }
}

export interface TraceFigures {
  totalBytes: number;
  cacheBytes: number;
  copiedBytes: number;
  copiesDone: number;
  copiesCancelled: number;
  evictions: number;
  meanStretch: number;
  makespanS: number;
  timeline: Timeline;
}

/** Loop devices of the run: bytes read per tier, and direct I/O switched on as each appears. */
class LoopWatch {
  private readonly devices = new Map<string, { backing: string; sectors: number }>();
  readonly bytes = { slow: 0, cache: 0 };
  private stopped = false;
  private done: Promise<void> = Promise.resolve();

  constructor(
    private readonly dirs: DaemonDirs,
    private readonly periodMs = 200,
  ) {}

  start(): void {
    this.done = (async () => {
      while (!this.stopped) {
        await this.poll();
        await sleep(this.periodMs);
      }
      await this.poll();
    })();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }

  private async poll(): Promise<void> {
    const sectors = new Map<string, number>();
    for (const line of (await readFile("/proc/diskstats", "utf8")).split("\n")) {
      const f = line.trim().split(/\s+/);
      if (f[2]?.startsWith("loop")) sectors.set(f[2], Number(f[5]));
    }
    for (const name of (await readdir("/sys/block")).filter((n) => n.startsWith("loop"))) {
      const backing = await readFile(`/sys/block/${name}/loop/backing_file`, "utf8").then(
        (s) => s.trim(),
        () => "",
      );
      const tier = backing.startsWith(`${this.dirs.datadir}/`) ? "slow" : backing.startsWith(`${this.dirs.cachedir}/`) ? "cache" : undefined;
      const now = sectors.get(name) ?? 0;
      const known = this.devices.get(name);
      if (!tier) {
        this.devices.delete(name);
        continue;
      }
      if (!known || known.backing !== backing) {
        // First sight: the baseline, as the daemon's Stats does; and no page cache under it from now on.
        this.devices.set(name, { backing, sectors: now });
        await run("losetup", ["--direct-io=on", `/dev/${name}`]).catch(() => undefined);
        continue;
      }
      if (now > known.sectors) this.bytes[tier] += (now - known.sectors) * 512;
      known.sectors = now;
    }
  }
}

function runReader(bed: Bed, dir: string, rate: number, bytes: number): Promise<ReaderResult> {
  return runJsonChild<ReaderResult>(READER, [path.join(bed.cgroup, "cgroup.procs"), dir, String(rate), String(bytes)]);
}

export interface TraceOptions {
  datadir: string;
  cachedir: string;
  mountdir: string;
  progress: (line: string) => void;
}

async function replay(bed: Bed, trace: Trace, o: TraceOptions, policy: PolicyName): Promise<TraceFigures> {
  const dirs: DaemonDirs = { datadir: o.datadir, cachedir: o.cachedir, mountdir: o.mountdir };
  const names = trace.sizes.map((_, i) => datasetName(i));
  await resetDaemon(bed, dirs);
  await bed.throttle(MINI.slowBandwidth);
  await bed.dropCaches();
  const watch = new LoopWatch(dirs);
  watch.start();
  const daemon = await Daemon.start(
    bed,
    dirs,
    { capacity: `${MINI.capacity / MiB}MB`, interval: String(MINI.intervalS), period: String(MINI.periodS), max_copies: String(MINI.maxCopies), command_timeout: "60", policy },
    `trace-${policy}`,
  );
  daemon.onEvent((e) => {
    if (!["copy finished", "copy failed", "copy cancelled"].includes(e.msg) || !e.dataset) return;
    const image = path.join(o.datadir, `${e.dataset}.sqfs`);
    void run("dd", [`if=${image}`, "iflag=nocache", "count=0", "status=none"]).catch(() => undefined);
  });
  const groupBefore = await bed.groupReadBytes();
  const stretches: number[] = [];
  let makespanS = 0;
  let t0Epoch = Date.now();
  try {
    for (const name of names) await daemon.waitFor((e) => e.msg === "mounted image" && e.dataset === name, 30_000, `mount of ${name}`);
    await sleep(300); // let the loop watcher see the new devices and switch them to direct I/O
    const t0 = performance.now();
    t0Epoch = Date.now();
    const jobs = trace.jobs.map(async (job, k) => {
      const wait = t0 + job.start * 1000 - performance.now();
      if (wait > 0) await sleep(wait);
      const r = await runReader(bed, path.join(o.mountdir, names[job.dataset] as string), job.rate, job.bytes);
      stretches.push(r.ms / 1000 / (job.bytes / job.rate));
      o.progress(`  job ${k + 1}/${trace.jobs.length} (${names[job.dataset] as string}) done at ${fixed((performance.now() - t0) / 1000, 1)} s`);
    });
    await Promise.all(jobs);
    makespanS = (performance.now() - t0) / 1000;
  } finally {
    await watch.stop();
    await daemon.stop();
  }
  const groupBytes = (await bed.groupReadBytes()) - groupBefore;
  await resetDaemon(bed, dirs);
  const ev = daemon.events;
  const problems = daemon.problems();
  if (problems.length > 0) o.progress(`  daemon problems: ${problems.map((e) => e.msg).join("; ")}`);
  return {
    totalBytes: watch.bytes.slow + watch.bytes.cache,
    cacheBytes: watch.bytes.cache,
    // The group's slow-tier reads are the jobs' slow reads plus the copies' (rsync reads the image file directly).
    copiedBytes: Math.max(0, groupBytes - watch.bytes.slow),
    copiesDone: ev.filter((e) => e.msg === "copy finished").length,
    copiesCancelled: ev.filter((e) => e.msg === "copy cancelled").length,
    evictions: ev.filter((e) => e.msg === "deleted cache file" && e.reason === "dropped from cache").length,
    meanStretch: stretches.reduce((s, x) => s + x, 0) / Math.max(1, stretches.length),
    makespanS,
    timeline: ev.flatMap((e) => {
      const t = `${fixed((e.t - t0Epoch) / 1000)} s`;
      if (e.msg === "copy started") return [`${t} copy ${e.dataset ?? "?"}`];
      if (e.msg === "mounted cached copy") return [`${t} cached ${e.dataset ?? "?"}`];
      if (e.msg === "copy cancelled") return [`${t} cancelled ${e.dataset ?? "?"}`];
      if (e.msg === "deleted cache file" && e.reason === "dropped from cache") return [`${t} evicted ${e.dataset ?? "?"}`];
      return [];
    }),
  };
}

function fromSim(r: SimResult, timeline: Timeline): TraceFigures {
  return {
    timeline,
    totalBytes: r.totalBytes,
    cacheBytes: r.cacheBytes,
    copiedBytes: r.copiedBytes,
    copiesDone: r.copiesDone,
    copiesCancelled: r.copiesCancelled,
    evictions: r.evictions,
    meanStretch: r.meanStretch,
    makespanS: r.simulatedS,
  };
}

/**
 * The simulated side alone: the daemon's policy (OursPolicy) and the original
 * on the trace, with the testbed's parameters. Needs no testbed (and no root).
 */
export function simulateMini(trace: Trace): { ours: TraceFigures; original: TraceFigures } {
  const config: SimConfig = {
    capacity: MINI.capacity,
    slowBandwidth: MINI.slowBandwidth,
    cacheBandwidth: MINI.cacheBandwidth,
    intervalS: MINI.intervalS,
    periodS: MINI.periodS,
    maxCopies: MINI.maxCopies,
  };
  const simulated = (policy: SimPolicy): TraceFigures => {
    const recording = new Recording(policy);
    return fromSim(simulate(trace, recording, config), recording.timeline);
  };
  return {
    ours: simulated(new OursPolicy(trace.sizes.length, MINI.periodS)),
    original: simulated(new OriginalPolicy(trace.sizes.length, MINI.periodS)),
  };
}

export async function traceSuite(bed: Bed, o: TraceOptions): Promise<string> {
  const trace = miniTrace(await buildImages(o.datadir));
  const { ours: simOurs, original: simOriginal } = simulateMini(trace);
  o.progress("  the daemon with policy = adaptive");
  const real = await replay(bed, trace, o, "adaptive");
  o.progress("  the daemon with policy = original");
  const realOriginal = await replay(bed, trace, o, "original");
  const cols = [real, realOriginal, simOurs, simOriginal];
  const row = (label: string, f: (x: TraceFigures) => string): string[] => [label, ...cols.map(f)];
  const table = markdownTable(
    ["", "testbed, policy = adaptive (ours)", "testbed, policy = original", "simulator, ours (OursPolicy: src's plan)", "simulator, original (src's plan, policy = original)"],
    [
      row("bytes read by the jobs", (x) => `${fixed(x.totalBytes / MiB)} MiB`),
      row("fraction served from the cache", (x) => fixed(x.cacheBytes / x.totalBytes, 3)),
      row("bytes copied (slow-tier reads of copies)", (x) => `${fixed(x.copiedBytes / MiB)} MiB`),
      row("copies finished / cancelled", (x) => `${x.copiesDone} / ${x.copiesCancelled}`),
      row("evictions", (x) => String(x.evictions)),
      row("mean job stretch (time ÷ time at its own rate)", (x) => fixed(x.meanStretch, 2)),
      row("last job done at", (x) => `${fixed(x.makespanS, 1)} s`),
      row("what happened (s from the first job)", (x) => x.timeline.join(", ")),
    ],
  );
  const jobs = trace.jobs.map((j) => `${j.start} s ${datasetName(j.dataset)} ${fixed(j.rate / MiB)} MiB/s × ${fixed(j.bytes / (MINI.sizes[j.dataset] as number))}`).join("; ");
  return (
    `Trace: datasets ${MINI.sizes.map((s, i) => `${datasetName(i)} ${fixed(s / MiB)} MiB`).join(", ")} (of data; each image is a few KiB larger); jobs (start, dataset, rate × epochs): ${jobs}. ` +
    `capacity ${fixed(MINI.capacity / MiB)} MiB, slow tier ${fixed(MINI.slowBandwidth / MiB)} MiB/s shared by jobs and copies, interval ${MINI.intervalS} s, period ${MINI.periodS} s, max_copies ${MINI.maxCopies}.\n\n` +
    table
  );
}

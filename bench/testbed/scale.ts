/**
 * Issue 11 on real mounts: the daemon with 1,000 and 10,000 images, each
 * its own dataset on its own loop device, and a file server that counts
 * what reaches it. For each size, and for the daemon before and after the
 * change (SM_SCALE_BEFORE: another build's cli.js), in one run:
 *
 * - time to mount each thousand of the images dropped at once, from start;
 * - READY=1's delay after start (a systemd-notify first in PATH that
 *   records the time of each message);
 * - idle CPU per tick, the daemon and the programs it ran (cutime), once
 *   every image is mounted and the windows are full; RSS now and at peak;
 * - the metadata operations one quiet tick makes on datadir, counted by
 *   the FUSE file server (test/fixtures/faultfs.py --no-cache: every lookup
 *   and stat reaches it, as on NFS without attribute caching), and what the
 *   original's scan (listdir + a stat of each image, every tick) makes on
 *   the same directory;
 * - `scratch_manager status` wall time: the table, --json, and a filter.
 *
 * The images are copies of one small squashfs image in datadir, which is
 * a FUSE passthrough of a directory on the testbed's disk. No dataset is
 * read, so no copy runs: the steady state of a node.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { copyFile, mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Bed, MiB } from "./bed.js";
import { CLI, Daemon, resetDaemon, type DaemonDirs } from "./daemon.js";
import { run, sleep } from "./exec.js";
import { makeImage } from "./images.js";
import { cpuTicks, ticksPerSecond } from "./proc.js";
import { fixed, markdownTable, median } from "../stats.js";

/** test/fixtures/faultfs.py, from build/bench/testbed/scale.js. */
const FAULTFS = fileURLToPath(new URL("../../../test/fixtures/faultfs.py", import.meta.url));

export const SCALE = {
  counts: (process.env.SM_SCALE_COUNTS ?? "1000,10000").split(",").map(Number),
  /** While the images are mounted: the default interval, as on a node. */
  mountIntervalS: 5,
  /** Then, for the idle figures (changed by a reload): many ticks in little time. */
  intervalS: 0.5,
  /** 240 samples per window, as with the defaults (5 s, 1200 s), full after two minutes instead of twenty. */
  periodS: Number(process.env.SM_SCALE_PERIOD ?? 120),
  /** Ticks over which idle CPU and the file server's operations are measured. */
  ticks: 40,
  /** The daemon before the change gets this long to mount everything (quadratic: 10,000 would take tens of minutes). */
  beforeMountCapS: Number(process.env.SM_SCALE_BEFORE_CAP ?? 240),
  /** SM_SCALE_CACHED=1: every dataset pinned, so cached (each its copy and cache mount): the probes' cost at that many cached datasets (issue 20). */
  cached: process.env.SM_SCALE_CACHED === "1",
} as const;

/** The build to compare with (SM_SCALE_BEFORE=/path/to/build/src/cli.js), if any. */
const BEFORE = process.env.SM_SCALE_BEFORE;

interface Counts {
  ops: Record<string, number>;
  bytes_read: number;
}

/** The FUSE file server in front of datadir, counting every operation (no attribute cache in front of it). */
class FileServer {
  private constructor(
    private readonly child: ChildProcess,
    readonly countsFile: string,
  ) {}

  static async start(source: string, mountPoint: string, work: string): Promise<FileServer> {
    const control = path.join(work, "faultfs.control");
    const countsFile = path.join(work, "faultfs.counts");
    await writeFile(control, "ok\n");
    const before = (await run("stat", ["-c", "%d", mountPoint])).stdout.trim();
    const child = spawn("/usr/bin/python3", [FAULTFS, source, mountPoint, "--control", control, "--counts", countsFile, "--no-cache"], { stdio: "ignore" });
    for (let i = 0; i < 200; i++) {
      if ((await run("stat", ["-c", "%d", mountPoint])).stdout.trim() !== before) return new FileServer(child, countsFile);
      await sleep(50);
    }
    child.kill("SIGKILL");
    throw new Error(`faultfs did not mount at ${mountPoint}`);
  }

  async counts(): Promise<Counts> {
    await sleep(250); // the counts file is rewritten every 100 ms
    return JSON.parse(await readFile(this.countsFile, "utf8")) as Counts;
  }

  async stop(mountPoint: string): Promise<void> {
    await run("umount", ["--", mountPoint]).catch(() => undefined);
    if (this.child.exitCode === null) {
      const exited = new Promise((r) => this.child.once("exit", r));
      this.child.kill("SIGTERM");
      await Promise.race([exited, sleep(5000)]);
      if (this.child.exitCode === null) this.child.kill("SIGKILL");
    }
  }
}

const totalOps = (c: Counts) => Object.values(c.ops).reduce((s, n) => s + n, 0);

/** Operations between two counts, by name, largest first. */
function opsBetween(a: Counts, b: Counts): [string, number][] {
  return Object.entries(b.ops)
    .map(([op, n]): [string, number] => [op, n - (a.ops[op] ?? 0)])
    .filter(([, n]) => n > 0)
    .sort((x, y) => y[1] - x[1]);
}

async function cpuSeconds(pid: number): Promise<number> {
  return (await cpuTicks(pid, true)) / (await ticksPerSecond());
}

async function memoryMiB(pid: number): Promise<{ rss: number; hwm: number }> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN);
  return { rss: kib("VmRSS") / 1024, hwm: kib("VmHWM") / 1024 };
}

/** The original's scan of datadir, each tick: os.listdir, then a stat of each image (its getsize and getmtime read one stat each). */
async function originalScanOps(server: FileServer, datadir: string): Promise<number> {
  const before = await server.counts();
  await run("/usr/bin/python3", ["-c", "import os,sys\nd=sys.argv[1]\nfor f in os.listdir(d):\n  p=os.path.join(d,f); os.path.getsize(p); os.path.getmtime(p)", datadir], 600_000);
  return totalOps(await server.counts()) - totalOps(before);
}

/** Median wall time of `scratch_manager status ARGS` over a few runs. */
async function statusMs(cli: string, runtimeDir: string, args: string[]): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    await run(process.execPath, [cli, "status", "--runtime-dir", runtimeDir, ...args], 60_000);
    times.push(performance.now() - t);
  }
  return median(times);
}

export interface ScaleRun {
  daemon: "before" | "after";
  datasets: number;
  /** Seconds to mount each thousand, from start; fewer than datasets/1000 entries if the cap came first. */
  perThousandS: number[];
  mounted: number;
  mountS: number;
  readyS?: number;
  cpuMsPerTick?: number;
  tickMs?: number;
  rssMiB?: number;
  hwmMiB: number;
  opsPerTick?: number;
  opsDetail?: string;
  originalOpsPerScan?: number;
  status?: { table: number; json: number; filtered: number };
}

async function measure(bed: Bed, root: string, n: number, which: "before" | "after", progress: (line: string) => void): Promise<ScaleRun> {
  const cli = which === "before" ? (BEFORE as string) : CLI;
  const base = path.join(root, `scale-${which}-${n}`);
  const dirs: DaemonDirs = { datadir: path.join(base, "data"), cachedir: path.join(base, "cache"), mountdir: path.join(base, "mnt") };
  const source = path.join(base, "server");
  const work = path.join(base, "work");
  for (const d of [...Object.values(dirs), source, work]) await mkdir(d, { recursive: true });
  const image = path.join(work, "one.sqfs");
  await makeImage(image, MiB / 8, "scale");
  for (let i = 0; i < n; i++) await copyFile(image, path.join(source, `s${String(i).padStart(5, "0")}.sqfs`));
  const server = await FileServer.start(source, dirs.datadir, work);
  const notify = path.join(work, "notify.log");
  const bin = path.join(work, "bin");
  await mkdir(bin, { recursive: true });
  await writeFile(path.join(bin, "systemd-notify"), `#!/bin/sh\necho "$(date +%s%3N) $*" >> ${notify}\n`, { mode: 0o755 });
  // The before-daemon knows none of the new keys.
  const keys: Record<string, string> = { capacity: "1GB", interval: String(SCALE.mountIntervalS), period: String(SCALE.periodS), command_timeout: "120" };
  if (SCALE.cached) keys.pin = Array.from({ length: n }, (_, i) => `s${String(i).padStart(5, "0")}`).join(",");
  const started = Date.now();
  const daemon = await Daemon.start(bed, dirs, keys, `scale-${which}-${n}`, {
    cli,
    env: { NOTIFY_SOCKET: "/run/systemd/notify-bench", PATH: `${bin}:${process.env.PATH ?? ""}` },
    // As the packaged launcher (packaging/scratch_manager) runs the daemon after the change; SM_SCALE_BEFORE_FLAGS=1 runs "before" so too (two builds that both have the launcher).
    nodeArgs: which === "after" || process.env.SM_SCALE_BEFORE_FLAGS === "1" ? ["--max-semi-space-size=1", "--heap-growing-percent=50", ...(process.env.SM_SCALE_NODE_ARGS ?? "").split(" ").filter((a) => a !== "")] : [],
  });
  const pid = daemon.pid;
  if (pid === undefined) throw new Error("scale: the daemon has no pid");
  const mountedAt: number[] = [];
  let cachedMounts = 0;
  daemon.onEvent((e) => {
    if (e.msg === "mounted image") mountedAt.push(e.t);
    if (e.msg === "mounted cached copy") cachedMounts++;
  });
  try {
    const report = setInterval(() => progress(`  ${which}: ${mountedAt.length} of ${n} mounted`), 15_000);
    const cap = which === "before" ? SCALE.beforeMountCapS * 1000 : 900_000;
    try {
      await daemon.waitFor(() => mountedAt.length >= n, cap, `${n} mounts`).catch((err: unknown) => {
        if (which === "after") throw err;
      });
    } finally {
      clearInterval(report);
    }
    const mounted = mountedAt.length;
    const mountS = ((mountedAt.at(-1) ?? started) - started) / 1000;
    const perThousandS: number[] = [];
    for (let k = 1000; k <= mounted; k += 1000) perThousandS.push(((mountedAt[k - 1] as number) - (k === 1000 ? started : (mountedAt[k - 1001] as number))) / 1000);
    const notes = await readFile(notify, "utf8").catch(() => "");
    const readyLine = notes.split("\n").find((l) => l.includes("READY=1"));
    const readyS = readyLine ? (Number(readyLine.split(" ")[0]) - started) / 1000 : undefined;
    const run0: ScaleRun = { daemon: which, datasets: n, perThousandS, mounted, mountS, readyS, hwmMiB: (await memoryMiB(pid)).hwm };
    if (mounted < n) {
      progress(`  ${which}: ${mounted} of ${n} mounted after ${SCALE.beforeMountCapS} s; the idle figures are not measured`);
      return run0;
    }
    if (SCALE.cached) {
      await daemon.waitFor(() => cachedMounts >= n, 900_000, `${n} cached copies mounted`);
      progress(`  ${which}: ${n} cached`);
    }
    progress(`  ${which}: ${n} mounted in ${fixed(mountS, 1)} s; interval ${SCALE.intervalS} s, filling the windows (${SCALE.periodS} s)`);
    await daemon.reload({ interval: String(SCALE.intervalS) });
    await sleep(SCALE.periodS * 1000);
    const tickEvents = () => daemon.events.filter((e) => e.msg === "tick");
    const ticksBefore = tickEvents().length;
    const cpuBefore = await cpuSeconds(pid);
    const countsBefore = await server.counts();
    await daemon.waitFor(() => tickEvents().length >= ticksBefore + SCALE.ticks, 600_000, `${SCALE.ticks} ticks`);
    const cpuAfter = await cpuSeconds(pid);
    const countsAfter = await server.counts();
    const ticks = tickEvents().slice(ticksBefore, ticksBefore + SCALE.ticks);
    const mem = await memoryMiB(pid);
    const ops = opsBetween(countsBefore, countsAfter);
    const opsTotal = ops.reduce((s, [, c]) => s + c, 0);
    const runtimeDir = path.join(bed.root, "daemon", `scale-${which}-${n}`, "run");
    const status = {
      table: await statusMs(cli, runtimeDir, []),
      json: await statusMs(cli, runtimeDir, ["--json"]),
      filtered: which === "after" ? await statusMs(cli, runtimeDir, ["s0001*", "--state", "slow"]) : NaN,
    };
    const problems = daemon.problems();
    if (problems.length > 0) progress(`  daemon problems: ${problems.map((e) => e.msg).join("; ")}`);
    return {
      ...run0,
      cpuMsPerTick: ((cpuAfter - cpuBefore) * 1000) / SCALE.ticks,
      tickMs: median(ticks.map((e) => Number(e.ms))),
      rssMiB: mem.rss,
      hwmMiB: mem.hwm,
      opsPerTick: opsTotal / SCALE.ticks,
      opsDetail: ops.map(([op, c]) => `${op} ${fixed(c / SCALE.ticks, 1)}`).join(", "),
      originalOpsPerScan: which === "after" ? await originalScanOps(server, dirs.datadir) : undefined,
      status,
    };
  } finally {
    await daemon.stop();
    // SM_SCALE_LOG=DIR: the daemon's log lines (but its tick lines), to see what a run did.
    if (process.env.SM_SCALE_LOG) {
      await writeFile(path.join(process.env.SM_SCALE_LOG, `${which}-${n}.log`), daemon.events.filter((e) => e.msg !== "tick").map((e) => JSON.stringify(e)).join("\n"));
    }
    progress(`  unmounting ${mountedAt.length} datasets`);
    await resetDaemon(bed, dirs);
    await server.stop(dirs.datadir);
  }
}

export async function scaleSuite(bed: Bed, root: string, progress: (line: string) => void): Promise<string> {
  const runs: ScaleRun[] = [];
  for (const n of SCALE.counts) {
    for (const which of BEFORE ? (["before", "after"] as const) : (["after"] as const)) {
      progress(`testbed: scale, ${n} datasets, the daemon ${which} the change`);
      const r = await measure(bed, root, n, which, progress);
      // Said as it comes: a later failure does not lose it.
      progress(`  result: ${JSON.stringify(r)}`);
      runs.push(r);
    }
  }
  const ms = (x: number | undefined) => (x === undefined || Number.isNaN(x) ? "-" : `${fixed(x, 0)} ms`);
  const thousands = (r: ScaleRun) =>
    r.perThousandS.length <= 4 ? r.perThousandS.map((s) => fixed(s, 1)).join(", ") : `${r.perThousandS.slice(0, 2).map((s) => fixed(s, 1)).join(", ")}, ..., ${r.perThousandS.slice(-2).map((s) => fixed(s, 1)).join(", ")}`;
  const mountTable = markdownTable(
    ["daemon", "images", "all mounted after", "seconds per thousand (first ... last)", "READY=1 after start"],
    runs.map((r) => [
      r.daemon,
      String(r.datasets),
      r.mounted < r.datasets ? `${r.mounted} mounted after ${SCALE.beforeMountCapS} s (stopped)` : `${fixed(r.mountS, 1)} s`,
      thousands(r) || "-",
      r.readyS === undefined ? "-" : `${fixed(r.readyS, 1)} s`,
    ]),
  );
  const idleTable = markdownTable(
    ["daemon", "datasets", "CPU per tick (daemon + its programs)", "tick ms (median)", "RSS", "peak RSS", "datadir operations per tick", "status / --json / filtered"],
    runs
      .filter((r) => r.cpuMsPerTick !== undefined)
      .map((r) => [
        r.daemon,
        String(r.datasets),
        ms(r.cpuMsPerTick),
        ms(r.tickMs),
        `${fixed(r.rssMiB ?? NaN, 1)} MiB`,
        `${fixed(r.hwmMiB, 1)} MiB`,
        `${fixed(r.opsPerTick ?? NaN, 1)} (${r.opsDetail || "none"})`,
        `${ms(r.status?.table)} / ${ms(r.status?.json)} / ${ms(r.status?.filtered)}`,
      ]),
  );
  const server = markdownTable(
    ["images", "ours: operations per quiet tick", "the original's scan (listdir + stat each image, every tick)", "one node, per second (5 s ticks): ours / original", "1,000 nodes, per second: ours / original"],
    runs
      .filter((r) => r.daemon === "after" && r.originalOpsPerScan !== undefined)
      .map((r) => {
        const ours = (r.opsPerTick ?? NaN) / 5;
        const orig = (r.originalOpsPerScan ?? NaN) / 5;
        return [String(r.datasets), fixed(r.opsPerTick ?? NaN, 1), String(r.originalOpsPerScan), `${fixed(ours, 2)} / ${fixed(orig, 0)}`, `${fixed(ours * 1000, 0)} / ${fixed(orig * 1000, 0)}`];
      }),
  );
  return [
    `interval ${SCALE.mountIntervalS} s (the default) while the images are mounted, then ${SCALE.intervalS} s (by a reload) with period ${SCALE.periodS} s (240 samples per window, as with the defaults); idle figures over ${SCALE.ticks} ticks once every image was mounted and the windows were full; no dataset read. datadir: FUSE passthrough (faultfs.py --no-cache) counting every operation that reaches it.${BEFORE ? ` Before: ${BEFORE}.` : ""}`,
    "",
    mountTable,
    "",
    idleTable,
    "",
    "The file server's load (a production tick is 5 s):",
    "",
    server,
  ].join("\n");
}

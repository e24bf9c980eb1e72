/**
 * Items 1-3 (and 6) of issue 6 on a real two-tier testbed: the real daemon,
 * real loop devices, a read-throttled slow tier. Root only.
 *
 *   node build/bench/testbed.js [verify] [copy] [loop] [trace] [scale] [--reps N]
 *
 * With no suite named it runs verify, copy and loop (about 2 minutes);
 * `trace` (item 6) adds about 130 s, `scale` (item 4 on real mounts) about
 * 6 minutes. Prints the results as markdown on stdout
 * (BENCHMARKS.md quotes them), progress on stderr.
 *
 * The process re-executes itself in a private mount namespace (`unshare
 * --mount --propagation private`): every mount it makes dies with that
 * namespace, whatever happens. The outer process then checks that no mount,
 * loop device or cgroup of the run is left, removes the files, and fails the
 * run if anything survived.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readlinkSync, rmdirSync, existsSync } from "node:fs";
import { link, mkdir } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describeMachine, formatMachine } from "./machine.js";
import { Bed, GiB, leftovers, MiB, removeRoot } from "./testbed/bed.js";
import { copySuite } from "./testbed/copy.js";
import { run } from "./testbed/exec.js";
import { makeImage } from "./testbed/images.js";
import { loopSuite } from "./testbed/loop.js";
import { traceSuite } from "./testbed/trace.js";
import { scaleSuite } from "./testbed/scale.js";
import { fixed } from "./stats.js";
import { verifyThrottle } from "./testbed/verify.js";

const SUITES = ["verify", "copy", "loop", "trace", "scale"] as const;
type Suite = (typeof SUITES)[number];
const DEFAULT_SUITES: readonly Suite[] = ["verify", "copy", "loop"];

/** The figures' parameters, fixed here so that the write-up can quote them. */
export const PARAMS = {
  /** Apparent size of the slow tier's sparse ext4 image. */
  slowBytes: 3 * GiB,
  /** Each large image. */
  imageBytes: 512 * MiB,
  /** The slow tier's bandwidth in the first phase of item 2 (about a 2 Gbit/s share of an NFS server); the second has none. */
  throttleBps: 256 * MiB,
  /** Item 1's check, and item 3's first run: slow enough that the unthrottled reads are clearly faster, and that item 3's two copies last a few dozen ticks. */
  checkThrottleBps: 64 * MiB,
  checkBytes: 128 * MiB,
  /** Item 3's daemon `interval`: short, so that the copies span a few dozen ticks. */
  loopIntervalS: 0.5,
  /** Item 2's runs of each method in each phase. */
  reps: 3,
} as const;

const out = (line = ""): void => console.log(line);
const launched = performance.now();
const progress = (line: string): void => console.error(`[${((performance.now() - launched) / 1000).toFixed(1).padStart(5)} s] ${line}`);

interface Args {
  suites: Suite[];
  reps: number;
}

function parseArgs(argv: readonly string[]): Args | string {
  const suites: Suite[] = [];
  let reps: number = PARAMS.reps;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === "--reps") {
      reps = Number(argv[++i]);
      if (!Number.isInteger(reps) || reps < 1) return `--reps takes a positive integer, got ${JSON.stringify(argv[i])}`;
    } else if ((SUITES as readonly string[]).includes(a)) suites.push(a as Suite);
    else return `unknown argument ${JSON.stringify(a)}; expected ${SUITES.join(", ")} or --reps N`;
  }
  return { suites: suites.length > 0 ? suites : [...DEFAULT_SUITES], reps };
}

/** The machine line of bench/run.ts, plus the disk under the testbed: both tiers live on it. */
async function describeDisk(root: string): Promise<string> {
  const [source, fstype] = (await run("findmnt", ["-n", "-o", "SOURCE,FSTYPE", "--target", root])).stdout.trim().split(/\s+/);
  const disk = (source ?? "").replace(/\[.*$/, "");
  const info = await run("lsblk", ["-d", "-n", "-o", "NAME,SIZE,ROTA,TRAN,MODEL", disk]).then(
    (o) => o.stdout.trim().replace(/\s+/g, " "),
    () => "?",
  );
  const mem = (await run("free", ["-g"])).stdout.split("\n")[1]?.split(/\s+/)[1] ?? "?";
  return `disk: ${disk} (${info}), ${fstype ?? "?"}; RAM ${mem} GiB`;
}

async function inner(args: Args, root: string): Promise<number> {
  const outerNs = process.env.SM_TESTBED_OUTER_NS;
  if (!outerNs || readlinkSync("/proc/self/ns/mnt") === outerNs) throw new Error("testbed: not in a private mount namespace");
  const started = performance.now();
  out(formatMachine(describeMachine()));
  out(`command: node build/bench/testbed.js ${process.argv.slice(2).join(" ")}`.trimEnd());
  out(await describeDisk(root));
  out(`rsync: ${(await run("rsync", ["--version"])).stdout.split("\n")[0] ?? "?"}; ${(await run("cp", ["--version"])).stdout.split("\n")[0] ?? "?"}`);
  out("");

  progress(`testbed: building in ${root}`);
  const bed = await Bed.create({ root, slowBytes: PARAMS.slowBytes });
  let status = 0;
  try {
    const data = path.join(bed.slowDir, "data");
    const imageA = path.join(data, "alpha.sqfs");
    await makeImage(imageA, PARAMS.imageBytes, "alpha");
    out(
      `Testbed: slow tier = ext4 on ${bed.slowDevice} (${bed.slowMajMin}, a ${fixed(PARAMS.slowBytes / GiB)} GiB sparse file), ` +
        `read-throttled by blkio group ${bed.cgroup}; fast tier = ${bed.fastDir} on the disk's own file system.`,
    );

    if (args.suites.includes("verify")) {
      await bed.throttle(PARAMS.checkThrottleBps);
      progress("testbed: throttle check");
      const v = await verifyThrottle(bed, imageA, PARAMS.checkBytes);
      out("");
      out(`### 1. Throttle check (blkio.throttle.read_bps_device = ${fixed(PARAMS.checkThrottleBps / MiB)} MiB/s on ${bed.slowMajMin})`);
      out("");
      out(v.table);
      out("");
      out(v.holds ? "The throttle holds for both read paths, and only for members of the group." : "**The throttle does not hold as expected: see the table.**");
      if (!v.holds) status = 1;
    }

    if (args.suites.includes("copy")) {
      progress("testbed: copy throughput");
      const copyData = path.join(bed.slowDir, "copy");
      await mkdir(copyData, { recursive: true });
      await link(imageA, path.join(copyData, "alpha.sqfs"));
      const phases = await copySuite(bed, {
        image: path.join(copyData, "alpha.sqfs"),
        destDir: path.join(bed.fastDir, "copies"),
        cachedir: path.join(bed.fastDir, "cache"),
        mountdir: path.join(root, "mnt"),
        reps: args.reps,
        throttles: [PARAMS.throttleBps, 0],
        progress,
      });
      out("");
      out(`### 2. Copy throughput: one ${fixed(PARAMS.imageBytes / MiB)} MiB image, cold page cache, slow tier -> fast tier`);
      for (const p of phases) {
        out("");
        out(`${p.label}:`);
        out("");
        out(p.table);
      }
    }

    if (args.suites.includes("loop")) {
      const two = path.join(bed.slowDir, "two");
      await mkdir(two, { recursive: true });
      await link(imageA, path.join(two, "alpha.sqfs"));
      progress("testbed: building the second image");
      await makeImage(path.join(two, "beta.sqfs"), PARAMS.imageBytes, "beta");
      progress("testbed: loop responsiveness");
      const r = await loopSuite(bed, {
        images: [path.join(two, "alpha.sqfs"), path.join(two, "beta.sqfs")],
        cachedir: path.join(bed.fastDir, "cache"),
        mountdir: path.join(root, "mnt"),
        intervalS: PARAMS.loopIntervalS,
        throttles: [PARAMS.checkThrottleBps, 0],
      });
      out("");
      out(`### 3. Loop responsiveness: the daemon copying two ${fixed(PARAMS.imageBytes / MiB)} MiB images at once (max_copies = 2)`);
      out("");
      out(r.table);
      out("");
      out(`The daemon ran in blkio group \`${r.runs[0]?.blkioGroup ?? "?"}\` (from /proc/PID/cgroup), and its copy programs with it.`);
      if (r.runs.some((x) => !x.meets)) status = 1;
    }

    if (args.suites.includes("trace")) {
      progress("testbed: trace replay");
      const text = await traceSuite(bed, {
        datadir: path.join(bed.slowDir, "trace"),
        cachedir: path.join(bed.fastDir, "cache"),
        mountdir: path.join(root, "mnt"),
        progress,
      });
      out("");
      out("### 6. One trace on the testbed and in the simulator");
      out("");
      out(text);
    }

    if (args.suites.includes("scale")) {
      const text = await scaleSuite(bed, root, progress);
      out("");
      out("### 4. The daemon with hundreds of real mounts");
      out("");
      out(text);
    }
  } finally {
    progress("testbed: tearing down");
    const problems = await bed.teardown();
    for (const p of problems) progress(`testbed: teardown: ${p}`);
    if (problems.length > 0) status = 1;
  }
  out("");
  out(`(testbed: ${fixed((performance.now() - started) / 1000, 1)} s)`);
  return status;
}

async function outer(argv: readonly string[]): Promise<number> {
  if (process.getuid?.() !== 0) {
    console.error("testbed: run as root: it makes loop devices, mounts and a cgroup");
    return 2;
  }
  const root = mkdtempSync("/var/tmp/sm-testbed.");
  const self = fileURLToPath(import.meta.url);
  const child = spawnSync("unshare", ["--mount", "--propagation", "private", "--", process.execPath, self, ...argv], {
    stdio: "inherit",
    env: { ...process.env, SM_TESTBED_INNER: root, SM_TESTBED_OUTER_NS: readlinkSync("/proc/self/ns/mnt") },
  });
  let status = child.status ?? 1;
  // The namespace is gone: its mounts with it, and with them the autoclear loop devices. Check; release the group if it survived.
  const group = path.join("/sys/fs/cgroup/blkio", path.basename(root));
  if (existsSync(group)) {
    try {
      rmdirSync(group);
      console.error(`testbed: removed the cgroup ${group} the run left`);
    } catch (err) {
      console.error(`testbed: cannot remove ${group}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  const left = await leftovers(root);
  progress("testbed: checked for leftovers");
  if (left.length > 0) {
    console.error(`testbed: left behind: ${left.join("; ")}`);
    return 1;
  }
  await removeRoot(root);
  progress("testbed: removed the files");
  console.error("testbed: torn down: no mount, loop device, cgroup or file of the run left");
  if (child.error) {
    console.error(`testbed: ${child.error.message}`);
    status = 1;
  }
  return status;
}

async function main(argv: readonly string[]): Promise<number> {
  const args = parseArgs(argv);
  if (typeof args === "string") {
    console.error(`testbed: ${args}`);
    return 2;
  }
  const root = process.env.SM_TESTBED_INNER;
  if (!root) return outer(argv);
  try {
    return await inner(args, root);
  } catch (err) {
    console.error(`testbed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));

/**
 * Issue 21: a job trace on a real four-node Slurm (test/slurm/multinode.ts:
 * each node a network, UTS and mount namespace of its own, its own slurmd
 * and scratch_manager daemon), sharing one rate-limited file server
 * (test/fixtures/faultfs.py --rate --direct-io: one link every node's reads
 * share, no page cache in front of it). The same trace, four ways, in one
 * run:
 *
 * (a) no cache (capacity too small for any dataset);
 * (b) today's reactive daemon (it caches what is read);
 * (c) placement: slurm_node, jobs --comment datasets:NAME (job_submit.lua
 *     turns it into --prefer);
 * (d) placement and pre-staging: (c), and slurm_stage on node 4 with peer
 *     fill's key and listeners.
 *
 * Each job reads its dataset whole through its node's mountdir, then
 * computes (sleeps) a while; it notes whether its dataset's top layer was
 * the node's cached copy when it started. Printed: share of the jobs' bytes
 * read from the cache (the daemons' counters), jobs that started with their
 * data cached, makespan. Root only; run as `npm run bench:slurm`.
 *
 * Environment: SM_SLURM_JOBS (default 28), SM_SLURM_RATE_MIB (file server,
 * MiB/s, default 12), SM_SLURM_SEED (default 7).
 */
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { CLI, Daemon, FaultFs, makeImage, makeTestRoot, teardown, waitUntil } from "../test/integration/harness.js";
import { MultiNodeCluster } from "../test/slurm/multinode.js";
import type { StatusReport } from "../src/report/status.js";
import { prng } from "./rng.js";

const MiB = 1024 * 1024;
const TOP = fileURLToPath(new URL("../../", import.meta.url));
const JOBS = Number(process.env.SM_SLURM_JOBS ?? 28);
const RATE = Number(process.env.SM_SLURM_RATE_MIB ?? 12) * MiB;
const SEED = Number(process.env.SM_SLURM_SEED ?? 7);
const NODES = 4;
/** Datasets: sizes (MiB) and how often jobs ask for them. */
const DATASETS = [
  { name: "d0", mib: 6, weight: 8 },
  { name: "d1", mib: 6, weight: 6 },
  { name: "d2", mib: 10, weight: 4 },
  { name: "d3", mib: 10, weight: 3 },
  { name: "d4", mib: 14, weight: 2 },
  { name: "d5", mib: 14, weight: 2 },
  { name: "d6", mib: 18, weight: 1 },
  { name: "d7", mib: 18, weight: 1 },
];
const CAPACITY = "40MB";
const COMPUTE_S = 8;
/** A job submitted every this long. */
const ARRIVAL_MS = 2500;

type Way = "none" | "reactive" | "placement" | "staging";

interface JobLine {
  id: number;
  node: string;
  dataset: string;
  start: number;
  end: number;
  cachedAtStart: boolean;
}

function trace(): string[] {
  const rand = prng(SEED);
  const total = DATASETS.reduce((s, d) => s + d.weight, 0);
  return Array.from({ length: JOBS }, () => {
    let r = rand() * total;
    for (const d of DATASETS) if ((r -= d.weight) < 0) return d.name;
    return DATASETS[0]?.name as string;
  });
}

const progress = (line: string) => process.stderr.write(`${line}\n`);

async function runWay(way: Way, jobs: string[], label: string): Promise<{ way: Way; cacheShare: number; startedCached: number; makespanS: number; lines: JobLine[] }> {
  const root = makeTestRoot(`bslurm-${label}`);
  let daemons: Daemon[] = [];
  let cluster: MultiNodeCluster | undefined;
  try {
    // The file server first: the nodes' mount namespaces are copies of this one, made after.
    const server = await FaultFs.start(root, root.data, { rate: RATE, directIo: true });
    for (const d of DATASETS) makeImage(root, path.join(server.source, `${d.name}.sqfs`), { "data.bin": d.mib * MiB });
    if (way === "staging") {
      mkdirSync(path.join(server.source, ".scratch_manager"), { recursive: true, mode: 0o755 });
      writeFileSync(path.join(server.source, ".scratch_manager", "peer.key"), randomBytes(32), { mode: 0o600 });
    }
    // job_submit.lua reads the active features the stager's daemon (node 4) writes.
    const lua = readFileSync(path.join(TOP, "packaging/slurm/job_submit.lua"), "utf8").replace('"/run/scratch_manager/slurm-features"', JSON.stringify(path.join(root.root, `node${NODES}`, "run", "slurm-features")));
    cluster = await MultiNodeCluster.start(path.join(root.root, "slurm"), NODES, { jobSubmitLua: lua });
    for (const node of cluster.nodes) {
      const home = path.join(root.root, node.name);
      const dirs = { cachedir: path.join(home, "cache"), mountdir: path.join(home, "mnt"), state_dir: path.join(home, "state"), runtime_dir: path.join(home, "run") };
      for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
      const keys: Record<string, string | number> = { ...dirs, capacity: way === "none" ? "1MB" : CAPACITY, interval: 1, period: 120, scan_timeout: 10, command_timeout: 30 };
      if (way === "placement" || way === "staging") keys.slurm_node = "auto";
      if (way === "placement" && node.name === `node${NODES}`) keys.slurm_stage = "features";
      if (way === "staging") Object.assign(keys, { peer_listen: `${node.address}:9456`, peer_advertise: `${node.name}:9456`, ...(node.name === `node${NODES}` ? { slurm_stage: "yes" } : {}) });
      const file = path.join(home, "scratch_manager.conf");
      writeFileSync(file, Daemon.standardConfig(root, keys));
      daemons.push(new Daemon(root, { args: ["--config", file], wrap: ["nsenter", "-t", String(node.pid), "-n", "-u", "-m", "--"], env: { SLURM_CONF: cluster.conf, PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin` } }));
    }
    const c = cluster;
    const mounted = (node: string) => DATASETS.every((d) => {
      try {
        execFileSync("nsenter", ["-t", String(c.nodes.find((n) => n.name === node)?.pid), "-m", "--", "mountpoint", "-q", path.join(root.root, node, "mnt", d.name)]);
        return true;
      } catch {
        return false;
      }
    });
    await waitUntil("every node has every dataset mounted", () => c.nodes.every((n) => mounted(n.name)), 120_000, 1000);
    const out = path.join(root.root, "jobs");
    mkdirSync(out, { recursive: true });
    const started = Date.now();
    for (const [i, dataset] of jobs.entries()) {
      const m = `${root.root}/$(hostname)/mnt/${dataset}`;
      const script = [
        `s=$(date +%s%3N)`,
        `b=$(cat /sys/block/$(basename $(findmnt -n -o SOURCE --mountpoint ${m} | tail -1))/loop/backing_file)`,
        `cat ${m}/data.bin > /dev/null`,
        `sleep ${COMPUTE_S}`,
        `echo "$SLURM_JOB_ID $(hostname) ${dataset} $s $(date +%s%3N) $b"`,
      ].join("; ");
      const comment = way === "placement" || way === "staging" ? ["--comment", `datasets:${dataset}`] : [];
      c.sbatch(["--time=2", ...comment, "--output", path.join(out, `job${i}.out`), "--wrap", script]);
      // Jobs arrive over time, as users submit them: a job submitted once its data is cached somewhere is placed there.
      await new Promise((r) => setTimeout(r, ARRIVAL_MS));
    }
    await waitUntil("every job done", () => readdirSync(out).filter((f) => readFileSync(path.join(out, f), "utf8").trim() !== "").length === jobs.length, 1800_000, 2000);
    const lines: JobLine[] = readdirSync(out).map((f) => {
      const [id, node, dataset, start, end, backing] = readFileSync(path.join(out, f), "utf8").trim().split(" ");
      return { id: Number(id), node: node ?? "", dataset: dataset ?? "", start: Number(start), end: Number(end), cachedAtStart: (backing ?? "").includes(`/${node ?? "?"}/cache/`) };
    });
    // The jobs' bytes through each tier, from each daemon's counters (/proc/diskstats; the probes' reads are not counted).
    let cache = 0;
    let slow = 0;
    for (const n of c.nodes) {
      const report = JSON.parse(execFileSync("nsenter", ["-t", String(n.pid), "-n", "-u", "-m", "--", process.execPath, CLI, "status", "--json", "--runtime-dir", path.join(root.root, n.name, "run")], { encoding: "utf8" })) as StatusReport;
      for (const d of report.datasets) {
        cache += d.cacheBytesRead;
        slow += d.slowBytesRead;
      }
    }
    const makespanS = (Math.max(...lines.map((l) => l.end)) - started) / 1000;
    return { way, cacheShare: cache / Math.max(1, cache + slow), startedCached: lines.filter((l) => l.cachedAtStart).length, makespanS, lines };
  } finally {
    for (const d of daemons) {
      d.signal("SIGTERM");
      await d.exit(10_000).catch(() => d.killAll());
    }
    daemons = [];
    await cluster?.stop();
    await teardown(root);
  }
}

async function inner(): Promise<void> {
  const jobs = trace();
  const counts = DATASETS.map((d) => `${d.name} (${d.mib} MiB) x${jobs.filter((j) => j === d.name).length}`).join(", ");
  progress(`slurm bench: ${NODES} nodes, ${JOBS} jobs (seed ${SEED}): ${counts}; file server ${RATE / MiB} MiB/s; capacity ${CAPACITY} a node; ${COMPUTE_S} s of compute a job`);
  const results = [];
  for (const way of ["none", "reactive", "placement", "staging"] as const) {
    progress(`slurm bench: (${way}) ...`);
    const r = await runWay(way, jobs, way);
    progress(`  ${way}: cache share ${(r.cacheShare * 100).toFixed(1)} %, ${r.startedCached}/${jobs.length} jobs started with their data cached, makespan ${r.makespanS.toFixed(1)} s`);
    results.push(r);
  }
  const fits = jobs.length;
  console.log(`machine: nproc=${os.cpus().length}, kernel ${os.release()}, node ${process.version}, load average ${os.loadavg().map((x) => x.toFixed(2)).join(" ")}`);
  console.log(`${NODES} nodes, ${JOBS} jobs (seed ${SEED}), 8 datasets (${counts}), file server ${RATE / MiB} MiB/s shared, ${CAPACITY} of cache a node, ${COMPUTE_S} s compute a job\n`);
  console.log("| way | bytes read from the cache | jobs started with their data cached | makespan |");
  console.log("| --- | --- | --- | --- |");
  for (const r of results) console.log(`| ${r.way} | ${(r.cacheShare * 100).toFixed(1)} % | ${r.startedCached} of ${fits} | ${r.makespanS.toFixed(1)} s |`);
  const reactive = results.find((r) => r.way === "reactive");
  const staging = results.find((r) => r.way === "staging");
  if (reactive && staging) console.log(`\n(d) against (b): ${(staging.cacheShare / Math.max(1e-9, reactive.cacheShare)).toFixed(2)}x the bytes from the cache`);
}

if (process.env.SM_OUTER_MNT_NS) {
  await inner();
} else {
  if (process.getuid?.() !== 0) {
    console.error("bench:slurm: run as root");
    process.exit(2);
  }
  const r = spawnSync("unshare", ["--mount", "--propagation", "private", "--", process.execPath, fileURLToPath(import.meta.url)], { stdio: "inherit", env: { ...process.env, SM_OUTER_MNT_NS: readlinkSync("/proc/self/ns/mnt") } });
  process.exit(r.status ?? 1);
}

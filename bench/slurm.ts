/**
 * Issue 21: a job trace on a real four-node Slurm (test/slurm/multinode.ts:
 * each node a network, UTS and mount namespace of its own, its own slurmd
 * and scratch_manager daemon), sharing one file server over the network:
 * sshd in the ctl namespace serves a plain directory, each node's datadir
 * is an sshfs mount of it over the node's veth, and tc shapes the links
 * (the server's to SM_SLURM_RATE_MIB, shared by every node; each node's to
 * SM_SLURM_LINK_MIB, which peer fill's copies cross). The same trace, four
 * ways, in one run:
 *
 * (a) no cache (capacity too small for any dataset);
 * (b) today's reactive daemon (it caches what is read);
 * (c) placement: slurm_node, jobs --comment datasets:NAME (job_submit.lua
 *     turns it into --prefer);
 * (d) placement and pre-staging: (c), and slurm_stage on node 4 with peer
 *     fill's key and listeners.
 *
 * The cluster is busy when the trace is submitted (one earlier job a node),
 * and the whole trace is submitted at once: a queue longer than the
 * cluster, which the backfill scheduler plans. The earlier jobs end a few
 * seconds apart, and every job of the trace runs JOB_S from its start under
 * a one-minute limit: Slurm plans by limits, and equal limits and equal run
 * times keep its plan in the order nodes really free up (jobs that all end
 * in the same second would be planned onto nodes in an order that is not
 * the order they free up in, and start elsewhere than planned). A job reads
 * its dataset whole through its node's mountdir, then computes (sleeps),
 * looking each second at its dataset's top layer. Printed per way: share of
 * the jobs' bytes read from the cache (the daemons' counters), jobs that
 * started with their data cached, the time from a job's start to its data
 * cached on its node, makespan. Root only; run as `npm run bench:slurm`.
 *
 * Environment: SM_SLURM_JOBS (default 28), SM_SLURM_RATE_MIB (default 12),
 * SM_SLURM_LINK_MIB (default 50), SM_SLURM_SEED (default 7),
 * SM_SLURM_WAYS (default none,reactive,placement,staging), SM_SLURM_LOGS=DIR
 * (each daemon's log lines and slurmctld's log, kept there for a look after
 * the run).
 */
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { CLI, Daemon, makeImage, makeTestRoot, teardown, waitUntil, type TestRoot } from "../test/integration/harness.js";
import { MultiNodeCluster } from "../test/slurm/multinode.js";
import type { StatusReport } from "../src/report/status.js";
import { prng } from "./rng.js";

const MiB = 1024 * 1024;
const TOP = fileURLToPath(new URL("../../", import.meta.url));
const JOBS = Number(process.env.SM_SLURM_JOBS ?? 28);
const RATE = Number(process.env.SM_SLURM_RATE_MIB ?? 12) * MiB;
const LINK = Number(process.env.SM_SLURM_LINK_MIB ?? 50) * MiB;
const SEED = Number(process.env.SM_SLURM_SEED ?? 7);
const WAYS = (process.env.SM_SLURM_WAYS ?? "none,reactive,placement,staging").split(",") as Way[];
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
/** Every job of the trace runs this long from its start, under a limit of one minute. */
const JOB_S = 40;
/** The earlier work the cluster is busy with when the trace is submitted: one job a node, this long, and STAGGER_S more on each next node. */
const FILL_S = 45;
const STAGGER_S = 3;
const SSH_PORT = 2222;

type Way = "none" | "reactive" | "placement" | "staging";

interface JobLine {
  id: number;
  node: string;
  dataset: string;
  start: number;
  end: number;
  cachedAtStart: boolean;
  /** From the job's start to its dataset's top layer being the node's cached copy, ms; undefined: not while it ran. */
  cachedAfterMs?: number;
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

/**
 * The shared file server, over the network: sshd in the ctl namespace
 * serving `source`, each node's `<node>/data` an sshfs mount of it; the
 * server's link (the ctl namespace's bridge) shaped to RATE, each node's to
 * LINK. Every process is the cluster's, ended by its stop(). Whether
 * /run/sshd (sshd's privilege separation directory) was made here.
 */
async function fileServer(c: MultiNodeCluster, root: TestRoot, source: string): Promise<boolean> {
  const dir = path.join(root.work, "ssh");
  mkdirSync(dir, { recursive: true });
  const key = (name: string) => path.join(dir, name);
  for (const name of ["host", "client"]) execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key(name)]);
  writeFileSync(key("authorized_keys"), readFileSync(`${key("client")}.pub`));
  const config = [`Port ${SSH_PORT}`, `ListenAddress ${c.ctlAddress}`, `HostKey ${key("host")}`, `AuthorizedKeysFile ${key("authorized_keys")}`, "PidFile none", "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "Subsystem sftp internal-sftp", ""];
  writeFileSync(key("sshd_config"), config.join("\n"));
  const madePrivsep = !existsSync("/run/sshd");
  if (madePrivsep) mkdirSync("/run/sshd", { mode: 0o755 });
  c.spawnInside(c.ctlPid, "sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", key("sshd_config")]);
  await waitUntil("sshd listening in the ctl namespace", () => readFileSync(path.join(c.dir, "log", "sshd.out"), "utf8").includes("Server listening"), 10_000, 50);
  c.shape(c.ctlPid, "smbr0", RATE);
  const options = [`IdentityFile=${key("client")}`, "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR", `port=${SSH_PORT}`, "reconnect", "ServerAliveInterval=5"].join(",");
  for (const n of c.nodes) {
    const mountPoint = path.join(root.root, n.name, "data");
    mkdirSync(mountPoint, { recursive: true });
    c.shape(n.pid, "eth0", LINK);
    c.spawnInside(n.pid, `sshfs-${n.name}`, ["sshfs", "-f", "-o", options, `root@${c.ctlAddress}:${source}`, mountPoint]);
  }
  const mounted = (pid: number, mountPoint: string) => {
    try {
      c.inside(pid, ["mountpoint", "-q", mountPoint]);
      return true;
    } catch {
      return false;
    }
  };
  await waitUntil("every node's sshfs mount", () => c.nodes.every((n) => mounted(n.pid, path.join(root.root, n.name, "data"))), 20_000, 100);
  return madePrivsep;
}

/** A job of the trace: its start, the top layer of its dataset then, its read, then computing until JOB_S, looking each second whether its data is cached yet. */
function jobScript(root: TestRoot, dataset: string): string {
  const m = `${root.root}/$(hostname)/mnt/${dataset}`;
  return [
    `s=$(date +%s%3N)`,
    `top() { cat /sys/block/$(basename $(findmnt -n -o SOURCE --mountpoint ${m} | tail -1))/loop/backing_file; }`,
    `cached() { case "$1" in *"/$(hostname)/cache/"*) return 0;; esac; return 1; }`,
    `b=$(top)`,
    `f=-1; if cached "$b"; then f=0; fi`,
    `cat ${m}/data.bin > /dev/null`,
    `while [ $(date +%s%3N) -lt $((s + ${JOB_S * 1000})) ]; do if [ $f -lt 0 ] && cached "$(top)"; then f=$(( $(date +%s%3N) - s )); fi; sleep 1; done`,
    `echo "$SLURM_JOB_ID $(hostname) ${dataset} $s $(date +%s%3N) $b $f"`,
  ].join("; ");
}

async function runWay(way: Way, jobs: string[], label: string): Promise<{ way: Way; cacheShare: number; lines: JobLine[]; makespanS: number }> {
  const root = makeTestRoot(`bslurm-${label}`);
  let daemons: Daemon[] = [];
  let cluster: MultiNodeCluster | undefined;
  let madePrivsep = false;
  try {
    const source = path.join(root.work, "server");
    mkdirSync(source, { recursive: true });
    for (const d of DATASETS) makeImage(root, path.join(source, `${d.name}.sqfs`), { "data.bin": d.mib * MiB });
    if (way === "staging") {
      mkdirSync(path.join(source, ".scratch_manager"), { recursive: true, mode: 0o755 });
      writeFileSync(path.join(source, ".scratch_manager", "peer.key"), randomBytes(32), { mode: 0o600 });
    }
    // job_submit.lua reads the active features the stager's daemon (node 4) writes.
    const lua = readFileSync(path.join(TOP, "packaging/slurm/job_submit.lua"), "utf8").replace('"/run/scratch_manager/slurm-features"', JSON.stringify(path.join(root.root, `node${NODES}`, "run", "slurm-features")));
    cluster = await MultiNodeCluster.start(path.join(root.root, "slurm"), NODES, { jobSubmitLua: lua });
    const c = cluster;
    madePrivsep = await fileServer(c, root, source);
    for (const node of c.nodes) {
      const home = path.join(root.root, node.name);
      const dirs = { datadir: path.join(home, "data"), cachedir: path.join(home, "cache"), mountdir: path.join(home, "mnt"), state_dir: path.join(home, "state"), runtime_dir: path.join(home, "run") };
      for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
      const keys: Record<string, string | number> = { ...dirs, capacity: way === "none" ? "1MB" : CAPACITY, interval: 1, period: 120, scan_timeout: 10, command_timeout: 30 };
      if (way === "placement" || way === "staging") keys.slurm_node = "auto";
      if (way === "placement" && node.name === `node${NODES}`) keys.slurm_stage = "features";
      if (way === "staging") Object.assign(keys, { peer_listen: `${node.address}:9456`, peer_advertise: `${node.name}:9456`, ...(node.name === `node${NODES}` ? { slurm_stage: "yes" } : {}) });
      const file = path.join(home, "scratch_manager.conf");
      writeFileSync(file, Daemon.standardConfig(root, keys));
      daemons.push(new Daemon(root, { args: ["--config", file], wrap: ["nsenter", "-t", String(node.pid), "-n", "-u", "-m", "--"], env: { SLURM_CONF: c.conf, PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin` } }));
    }
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
    // The cluster is busy with earlier work: one job a node (no dataset), then the whole trace at once.
    // They end STAGGER_S apart, as jobs on a real cluster do, and so do the jobs after them on each node (every job runs JOB_S).
    for (let i = 0; i < NODES; i++) c.sbatch(["--time=1", "--output", "/dev/null", "--wrap", `sleep ${FILL_S + i * STAGGER_S}`]);
    await waitUntil("the earlier work running on every node", () => c.jobs().filter((j) => String(j.job_state).includes("RUNNING")).length === NODES, 30_000, 250);
    const started = Date.now();
    for (const [i, dataset] of jobs.entries()) {
      const comment = way === "placement" || way === "staging" ? ["--comment", `datasets:${dataset}`] : [];
      c.sbatch(["--time=1", ...comment, "--output", path.join(out, `job${i}.out`), "--wrap", jobScript(root, dataset)]);
    }
    await waitUntil("every job done", () => readdirSync(out).filter((f) => readFileSync(path.join(out, f), "utf8").trim() !== "").length === jobs.length, 1800_000, 2000);
    const lines: JobLine[] = readdirSync(out).map((f) => {
      const [id, node, dataset, start, end, backing, after] = readFileSync(path.join(out, f), "utf8").trim().split(" ");
      const cachedAfterMs = Number(after ?? -1);
      return { id: Number(id), node: node ?? "", dataset: dataset ?? "", start: Number(start), end: Number(end), cachedAtStart: (backing ?? "").includes(`/${node ?? "?"}/cache/`), cachedAfterMs: cachedAfterMs >= 0 ? cachedAfterMs : undefined };
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
    return { way, cacheShare: cache / Math.max(1, cache + slow), lines, makespanS };
  } finally {
    for (const d of daemons) {
      d.signal("SIGTERM");
      await d.exit(10_000).catch(() => d.killAll());
    }
    if (cluster) saveLogs(label, cluster, daemons);
    daemons = [];
    await cluster?.stop();
    await teardown(root);
    if (madePrivsep) rmdirSync("/run/sshd");
  }
}

/** SM_SLURM_LOGS=DIR: each node's daemon log lines (JSON lines) and slurmctld's log, as LABEL-nodeN.jsonl and LABEL-slurmctld.log. */
function saveLogs(label: string, cluster: MultiNodeCluster, daemons: readonly Daemon[]): void {
  const dir = process.env.SM_SLURM_LOGS;
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  for (const [i, d] of daemons.entries()) writeFileSync(path.join(dir, `${label}-node${i + 1}.jsonl`), d.logs.map((l) => JSON.stringify(l)).join("\n") + "\n");
  const ctld = path.join(cluster.dir, "log", "slurmctld.log");
  if (existsSync(ctld)) copyFileSync(ctld, path.join(dir, `${label}-slurmctld.log`));
}

/** The median of these, or undefined. */
function median(values: number[]): number | undefined {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? undefined : (sorted[Math.floor((sorted.length - 1) / 2)] as number);
}

async function inner(): Promise<void> {
  const jobs = trace();
  const counts = DATASETS.map((d) => `${d.name} (${d.mib} MiB) x${jobs.filter((j) => j === d.name).length}`).join(", ");
  const setup = `${NODES} nodes (1 CPU each), ${JOBS} jobs (seed ${SEED}) submitted at once behind one earlier job a node, ${JOB_S} s each; 8 datasets (${counts}); file server link ${RATE / MiB} MiB/s shared, node links ${LINK / MiB} MiB/s (tc); ${CAPACITY} of cache a node`;
  progress(`slurm bench: ${setup}`);
  const results = [];
  for (const way of WAYS) {
    progress(`slurm bench: (${way}) ...`);
    const r = await runWay(way, jobs, way);
    const startedCached = r.lines.filter((l) => l.cachedAtStart).length;
    progress(`  ${way}: cache share ${(r.cacheShare * 100).toFixed(1)} %, ${startedCached}/${jobs.length} jobs started with their data cached, makespan ${r.makespanS.toFixed(1)} s`);
    for (const l of [...r.lines].sort((a, b) => a.start - b.start)) progress(`    job ${l.id} ${l.dataset} on ${l.node} at ${((l.start - Math.min(...r.lines.map((x) => x.start))) / 1000).toFixed(1)} s: ${l.cachedAtStart ? "cached" : l.cachedAfterMs !== undefined ? `cached after ${(l.cachedAfterMs / 1000).toFixed(1)} s` : "not cached"}`);
    results.push({ ...r, startedCached });
  }
  // Every dataset fits in a node's cache: every job counts for the goal's 90 %.
  const fits = jobs.length;
  console.log(`machine: nproc=${os.cpus().length}, kernel ${os.release()}, node ${process.version}, load average ${os.loadavg().map((x) => x.toFixed(2)).join(" ")}`);
  console.log(`${setup}\n`);
  console.log("| way | bytes read from the cache | jobs started with their data cached | from a job's start to its data cached (median; jobs never) | makespan |");
  console.log("| --- | --- | --- | --- | --- |");
  for (const r of results) {
    const after = median(r.lines.flatMap((l) => (l.cachedAtStart ? [0] : l.cachedAfterMs !== undefined ? [l.cachedAfterMs] : [])));
    const never = r.lines.filter((l) => !l.cachedAtStart && l.cachedAfterMs === undefined).length;
    console.log(`| ${r.way} | ${(r.cacheShare * 100).toFixed(1)} % | ${r.startedCached} of ${fits} | ${after === undefined ? "-" : `${(after / 1000).toFixed(1)} s`}; ${never} never | ${r.makespanS.toFixed(1)} s |`);
  }
  const reactive = results.find((r) => r.way === "reactive");
  const staging = results.find((r) => r.way === "staging");
  if (reactive && staging) console.log(`\n(d) against (b): ${(staging.cacheShare / Math.max(1e-9, reactive.cacheShare)).toFixed(2)}x the bytes from the cache; (d) started ${((staging.startedCached / fits) * 100).toFixed(0)} % of jobs with their data cached`);
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

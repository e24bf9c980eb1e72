/**
 * Issue 13, peer fill: a fleet of nodes on one machine sharing one file
 * server, all pinning one image at once, with peer fill off and on in the
 * same run. Root only.
 *
 *   npm run bench:fleet          (node build/bench/fleet.js)
 *
 * The file server is test/fixtures/faultfs.py over a directory of this run:
 * a FUSE passthrough with `--direct-io` (no page cache: every read of every
 * node reaches it), `--rate` (one link, which all reads share) and
 * `--counts` (the bytes it served). It holds the image every node pins
 * (random, incompressible data; SM_FLEET_MIB, default 256 MiB) and a smaller
 * one, the job's. Every node is a real daemon (build/src/cli.js) with its
 * own cachedir, mountdir, runtime_dir and state_dir, all with that FUSE
 * mount as datadir. For one node alone (the baseline, once), then for each N
 * of SM_FLEET_NODES (default 2,4,8), peer fill off then on:
 *
 * 1. start N daemons (interval 1 s; on: `peer_listen = 127.0.0.1:PORT`, a
 *    port each, and a fleet key at datadir/.scratch_manager/peer.key; off:
 *    neither), and wait until every node has both images mounted slow;
 * 2. start the job: a reader of the job's image file in datadir, through the
 *    same link (what the server's link leaves to a job's own reads);
 * 3. run `scratch_manager pin IMAGE --config FILE` for every node at once
 *    (what a Slurm prolog does on each node of a job);
 * 4. poll /proc/self/mountinfo until every node's mountdir/IMAGE is served
 *    from its cachedir (the top mount's loop device is backed by a file
 *    there);
 * 5. stop the job; the bytes the server sent, less the job's, are the fill's.
 *
 * Prints a markdown table on stdout (progress on stderr), with the issue's
 * goals next to it. Exit status 0 whatever the figures, and when a daemon
 * fails (reported in the table); non-zero when the harness itself fails.
 *
 * Everything lives in /work/tmp-fleet-XXXXXX (not /tmp, which other work
 * may wipe), in a private mount namespace (`unshare --mount --propagation
 * private`): the process re-executes itself there, as bench/testbed.ts
 * does. Daemons, the job and the file server are ended by pid; mounts under
 * the run's directory unmounted top first with `umount -l`; the FUSE with
 * fusermount -u; the outer process then checks that no mount or loop
 * device of the run is left and removes the directory.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readlinkSync } from "node:fs";
import { chmod, mkdir, readdir, rm, stat, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describeMachine, formatMachine } from "./machine.js";
import { fixed, markdownTable } from "./stats.js";
import { leftovers, MiB, removeRoot } from "./testbed/bed.js";
import { CLI, Daemon, type DaemonHost, type LogEvent } from "./testbed/daemon.js";
import { BenchCommandError, run, sleep } from "./testbed/exec.js";
import { JobReader } from "./testbed/fleet-job.js";
import { tierOf, unmountUnder, waitLoopsReleased, type Tier } from "./testbed/fleet-node.js";
import { FileServer } from "./testbed/fleet-server.js";
import { makeImage } from "./testbed/images.js";

function envNumbers(name: string, fallback: string): number[] {
  const raw = process.env[name] ?? fallback;
  const values = raw.split(",").map((s) => Number(s.trim()));
  if (values.length === 0 || values.some((v) => !Number.isFinite(v) || v <= 0)) throw new Error(`${name}=${JSON.stringify(raw)}: expected positive numbers, comma-separated`);
  return values;
}

const env = {
  nodes: envNumbers("SM_FLEET_NODES", "2,4,8").map(Math.round),
  imageMiB: envNumbers("SM_FLEET_MIB", "256")[0] as number,
  rateMiBps: envNumbers("SM_FLEET_RATE_MBPS", "50")[0] as number,
};

/** The figures' parameters, fixed here so that the write-up can quote them. */
export const FLEET = {
  nodes: env.nodes,
  /** The image every node pins. */
  imageBytes: Math.round(env.imageMiB * MiB),
  /** The job's image: a quarter of the other, read again and again. */
  jobBytes: Math.round(Math.max(16, env.imageMiB / 4) * MiB),
  /** The file server's link (SM_FLEET_RATE_MBPS, MiB/s: 50 -> 52428800 bytes/s). */
  rateBps: Math.round(env.rateMiBps * MiB),
  /** The daemons' interval: a pin is seen within a second. */
  intervalS: 1,
  /** Goals of issue 13, with peer fill. */
  goalBytesX: 1.2,
  goalBytesNodes: 8,
  goalTimeX: 1.5,
  /** Names in datadir: mount names `shared` and `job` (naming = first-dot). */
  image: "shared",
  job: "job",
} as const;

const out = (line = ""): void => console.log(line);
const launched = performance.now();
const progress = (line: string): void => console.error(`[${((performance.now() - launched) / 1000).toFixed(1).padStart(5)} s] ${line}`);

type Mode = "alone" | "off" | "on";

/** One fleet run: a row of the table. */
interface FleetRun {
  n: number;
  mode: Mode;
  /** Bytes the file server sent for the fill (the job's own reads taken out). */
  serverBytes?: number;
  /** Seconds from the pins to each node serving the image from its cache (undefined: not by the end of the wait). */
  cachedS?: (number | undefined)[];
  /** Seconds the fill was watched: until the last node was cached, or the wait's cap. */
  watchedS?: number;
  /** Seconds until every `pin` command had returned. */
  pinsS?: number;
  /** The job's reads over the fill, bytes per second. */
  jobBps?: number;
  /** Why there are no figures: a daemon or a pin failed, or the fill did not end in time. */
  failure?: string;
  /** Errors the daemons logged, and what they wrote on stderr. */
  problems: string[];
  /** The machine's 1-minute load average when the fill ended: other work on it skews the times. */
  load?: number;
}

/** A failure of what is measured (a daemon exits, refuses its configuration, a pin fails): a row of the table, not a harness error. */
class NodeFailure extends Error {}

/**
 * What must be undone (daemons, the job, mounts, the file server), for a
 * second Ctrl-C: the first one lets the run stop at its next check and undo
 * everything in order, the second undoes it at once. Each step runs once:
 * a second call waits for the first.
 */
class Undo {
  private readonly steps = new Map<number, () => Promise<void>>();
  private next = 0;

  add(step: () => Promise<void>): () => Promise<void> {
    const id = this.next++;
    let running: Promise<void> | undefined;
    const once = (): Promise<void> => (running ??= step());
    this.steps.set(id, once);
    return async () => {
      try {
        await once();
      } finally {
        this.steps.delete(id);
      }
    };
  }

  /** Every step not yet done, the latest first. */
  async all(): Promise<void> {
    for (const id of [...this.steps.keys()].reverse()) {
      await this.steps.get(id)?.().catch((err: unknown) => progress(`fleet: cleanup: ${err instanceof Error ? err.message : String(err)}`));
      this.steps.delete(id);
    }
  }
}

const undo = new Undo();

let interrupted: string | undefined;

/** Where the run may stop after a Ctrl-C: a harness error, so that every finally undoes what it made. */
function checkInterrupted(): void {
  if (interrupted !== undefined) throw new Error(`interrupted by ${interrupted}`);
}

/** sleep(), checking for a Ctrl-C every 200 ms. */
async function pause(ms: number): Promise<void> {
  const until = performance.now() + ms;
  for (;;) {
    checkInterrupted();
    const left = until - performance.now();
    if (left <= 0) return;
    await sleep(Math.min(200, left));
  }
}

/** Daemons run as they are here: no cgroup, files under the run's root. */
const host = (root: string): DaemonHost => ({ root, inGroup: (argv) => [...argv] });

/** A TCP port nobody listens on now, from the kernel (listen on port 0). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error("no free port"))));
    });
  });
}

interface Node {
  index: number;
  daemon: Daemon;
  cachedir: string;
  mountdir: string;
}

/** The fleet key of peer fill: 32 random bytes only root can read, where every node finds it (datadir/.scratch_manager/peer.key). */
async function setFleetKey(source: string, on: boolean): Promise<void> {
  const dir = path.join(source, ".scratch_manager");
  await rm(dir, { recursive: true, force: true });
  if (!on) return;
  await mkdir(dir, { mode: 0o755 });
  const key = path.join(dir, "peer.key");
  await writeFile(key, randomBytes(32), { mode: 0o600 });
  await chmod(key, 0o600);
}

function failIfDown(nodes: readonly Node[], what: string): void {
  for (const node of nodes) {
    if (!node.daemon.running) throw new NodeFailure(`node ${node.index}: the daemon exited ${what}: ${lastWords(node.daemon)}`);
  }
}

/** The daemon's last lines, shortened: a configuration error is one line on stderr. */
function lastWords(daemon: Daemon): string {
  const lines = daemon.events.slice(-3).map((e) => (e.level === "raw" ? e.msg : `${e.msg} ${JSON.stringify(Object.fromEntries(Object.entries(e).filter(([k]) => !["level", "t", "time", "msg", "pid", "hostname"].includes(k))))}`));
  return lines.join(" | ").slice(0, 400) || "(no output)";
}

interface Ctx {
  root: string;
  source: string;
  datadir: string;
  imageFile: string;
  jobFile: string;
  server: FileServer;
}

/** One fleet: N daemons, the pins at once, until every node serves the image from its cache. */
async function fleetRun(ctx: Ctx, n: number, mode: Mode): Promise<FleetRun> {
  const label = `${mode}-n${n}`;
  const base = path.join(ctx.root, "runs", label);
  const result: FleetRun = { n, mode, problems: [] };
  await setFleetKey(ctx.source, mode === "on");
  const ports = mode === "on" ? await Promise.all(Array.from({ length: n }, () => freePort())) : [];
  const nodes: Node[] = [];
  let job: JobReader | undefined;
  const stopAll = undo.add(async () => {
    await Promise.all(nodes.map((node) => node.daemon.stop()));
    for (const node of nodes) await unmountUnder(node.mountdir);
    await waitLoopsReleased(base);
    await waitLoopsReleased(ctx.datadir);
    const left = await leftovers(base);
    if (left.length > 0) throw new Error(`${label}: left after stopping the daemons: ${left.join("; ")}`);
  });
  const stopJob = undo.add(async () => {
    await job?.stop();
  });
  try {
    // 1. The fleet, every image mounted slow.
    progress(`${label}: starting ${n} daemon${n > 1 ? "s" : ""}`);
    const keys: Record<string, string> = {
      capacity: String(2 * (FLEET.imageBytes + FLEET.jobBytes)),
      interval: String(FLEET.intervalS),
    };
    await Promise.all(
      Array.from({ length: n }, async (_, i) => {
        const dirs = { datadir: ctx.datadir, cachedir: path.join(base, `node${i}`, "cache"), mountdir: path.join(base, `node${i}`, "mnt") };
        const nodeKeys = mode === "on" ? { ...keys, peer_listen: `127.0.0.1:${ports[i] as number}` } : keys;
        const daemon = await Daemon.start(host(ctx.root), dirs, nodeKeys, `${label}-node${i}`);
        // Known to the cleanup as soon as it runs, even if another fails to start.
        nodes.push({ index: i, daemon, cachedir: dirs.cachedir, mountdir: dirs.mountdir });
      }),
    );
    nodes.sort((a, b) => a.index - b.index);
    const points = (name: string, file: string) => nodes.map((node) => ({ target: path.join(node.mountdir, name), slowFile: file, cachedir: node.cachedir }));
    const allSlow = [...points(FLEET.image, ctx.imageFile), ...points(FLEET.job, ctx.jobFile)];
    const mountedBy = performance.now() + 60_000;
    for (;;) {
      failIfDown(nodes, "before mounting the images");
      const tiers = await tierOf(allSlow);
      if (tiers.every((t) => t === "slow")) break;
      if (performance.now() > mountedBy) throw new NodeFailure(`not every node mounted both images within 60 s (${tiers.join(",")})`);
      await pause(200);
    }
    // Three ticks: the mounts' first reads are done, the daemons past their start (a fleet runs long before a job pins).
    await pause(3 * FLEET.intervalS * 1000);

    // 2. The job, then 3. the pins, all at once.
    const serverBefore = await ctx.server.bytesServed();
    job = await JobReader.start(ctx.jobFile);
    progress(`${label}: every node has the images mounted slow; pinning ${FLEET.image} on all at once`);
    const t0 = Date.now();
    const pins = nodes.map((node) =>
      run(process.execPath, [CLI, "pin", FLEET.image, "--config", node.daemon.configFile], 60_000).then(
        () => Date.now(),
        (err: unknown) => {
          throw new NodeFailure(`node ${node.index}: pin failed: ${err instanceof BenchCommandError ? err.message.slice(-300) : String(err)}`);
        },
      ),
    );
    const pinsDone = Promise.all(pins);

    // 4. Until every node serves the image from its cache.
    const cachedAt: (number | undefined)[] = nodes.map(() => undefined);
    // Twice what N nodes each reading the whole image from the server take, and some: a fill slower than that is reported as such.
    const capS = 30 + (2 * n * FLEET.imageBytes) / FLEET.rateBps;
    let pinsFailed: unknown;
    pinsDone.catch((err: unknown) => (pinsFailed = err));
    let lastReport = performance.now();
    for (;;) {
      const now = Date.now();
      const tiers: Tier[] = await tierOf(points(FLEET.image, ctx.imageFile));
      tiers.forEach((t, i) => {
        if (t === "cache" && cachedAt[i] === undefined) cachedAt[i] = now;
      });
      if (cachedAt.every((t) => t !== undefined)) break;
      if (pinsFailed !== undefined) throw pinsFailed;
      failIfDown(nodes, "during the fill");
      if (now - t0 > capS * 1000) {
        progress(`${label}: ${cachedAt.filter((t) => t !== undefined).length} of ${n} nodes cached after ${fixed(capS)} s: stopped waiting`);
        break;
      }
      if (performance.now() - lastReport > 10_000) {
        lastReport = performance.now();
        progress(`${label}: ${cachedAt.filter((t) => t !== undefined).length} of ${n} nodes cached after ${fixed((now - t0) / 1000, 1)} s`);
      }
      await pause(100);
    }
    const complete = cachedAt.every((t) => t !== undefined);
    const t1 = complete ? Math.max(...(cachedAt as number[])) : Date.now();
    const pinTimes = await pinsDone;

    // 5. The job's share, and the fill's bytes: the server's, less the job's (so far, if the fill has not ended: copies still run).
    result.jobBps = job.rate(t0, t1);
    const jobBytes = await job.stop();
    result.serverBytes = (await ctx.server.bytesServed(complete ? 10_000 : 0)) - serverBefore - jobBytes;
    result.cachedS = cachedAt.map((t) => (t === undefined ? undefined : (t - t0) / 1000));
    result.watchedS = (t1 - t0) / 1000;
    result.pinsS = (Math.max(...pinTimes) - t0) / 1000;
    result.load = os.loadavg()[0];
    progress(
      `${label}: ${complete ? "all" : `${cachedAt.filter((t) => t !== undefined).length} of ${n}`} cached after ${fixed((t1 - t0) / 1000, 1)} s, server sent ${fixed(result.serverBytes / FLEET.imageBytes, 2)}x the image, job ${fixed(result.jobBps / MiB, 1)} MiB/s`,
    );
  } catch (err) {
    // After a Ctrl-C (which the daemons get too) a daemon that stopped is no finding.
    if (!(err instanceof NodeFailure) || interrupted !== undefined) throw err;
    result.failure = err.message;
    progress(`${label}: FAILED: ${err.message}`);
  } finally {
    await stopJob().catch((err: unknown) => progress(`${label}: the job reader: ${err instanceof Error ? err.message : String(err)}`));
    for (const node of nodes) {
      // One line each (a Node.js warning on stderr comes in several), and short.
      const line = (e: LogEvent) => `${e.level === "raw" ? "stderr: " : ""}${e.msg.replace(/\s+/g, " ").trim().slice(0, 240)}`;
      result.problems.push(...node.daemon.problems().map((e) => `node ${node.index}: ${line(e)}`));
    }
    await saveLogs(label, nodes);
    progress(`${label}: stopping the daemons and unmounting`);
    await stopAll(); // throws if anything is still mounted: then nothing is removed
    await rm(base, { recursive: true, force: true });
    for (const node of nodes) await rm(path.join(ctx.root, "daemon", `${label}-node${node.index}`), { recursive: true, force: true });
  }
  return result;
}

/** SM_FLEET_LOGS=DIR: each daemon's log lines, as JSON lines, for a look after the run. */
async function saveLogs(label: string, nodes: readonly Node[]): Promise<void> {
  const dir = process.env.SM_FLEET_LOGS;
  if (!dir) return;
  await mkdir(dir, { recursive: true });
  for (const node of nodes) {
    await writeFile(path.join(dir, `${label}-node${node.index}.jsonl`), node.daemon.events.map((e) => JSON.stringify(e)).join("\n") + "\n");
  }
}

/** The job's reads with nothing else on the link: what the rate limiter gives one reader. */
async function jobAlone(ctx: Ctx): Promise<number> {
  const job = await JobReader.start(ctx.jobFile);
  try {
    const t0 = Date.now();
    await pause(4000);
    return job.rate(t0, Date.now());
  } finally {
    await job.stop();
  }
}

async function describeDisk(root: string): Promise<string> {
  const [source, fstype] = (await run("findmnt", ["-n", "-o", "SOURCE,FSTYPE", "--target", root])).stdout.trim().split(/\s+/);
  const mem = (await run("free", ["-g"])).stdout.split("\n")[1]?.split(/\s+/)[1] ?? "?";
  return `disk under ${root}: ${source ?? "?"} (${fstype ?? "?"}); RAM ${mem} GiB`;
}

/** Seconds until every node was cached, or undefined if the wait ended first (then `watchedS` is a lower bound). */
function allCachedS(r: FleetRun): number | undefined {
  if (!r.cachedS || r.cachedS.some((t) => t === undefined)) return undefined;
  return Math.max(...(r.cachedS as number[]));
}

function report(runs: readonly FleetRun[], aloneJobBps: number, imageFileBytes: number): void {
  const alone = runs.find((r) => r.mode === "alone");
  const aloneS = alone ? (allCachedS(alone) ?? NaN) : NaN;
  const modeName = (m: Mode) => (m === "alone" ? "one node alone" : m === "on" ? "peer fill on" : "peer fill off");
  const rows = runs.map((r) => {
    if (r.failure !== undefined || !r.cachedS) return [String(r.n), modeName(r.mode), "-", "-", "-", "-", "-", "-", "-", `FAILED: ${(r.failure ?? "?").replace(/\|/g, "/").slice(0, 200)}`];
    const last = allCachedS(r);
    const cached = r.cachedS.filter((t): t is number => t !== undefined);
    const partial = last === undefined;
    const until = last ?? r.watchedS ?? NaN;
    return [
      String(r.n),
      modeName(r.mode),
      `${partial ? ">= " : ""}${fixed((r.serverBytes ?? NaN) / imageFileBytes, 2)}x`,
      partial ? `> ${fixed(until, 1)} (${cached.length} of ${r.n} cached)` : fixed(until, 1),
      Number.isFinite(aloneS) ? `${partial ? "> " : ""}${fixed(until / aloneS, 2)}x` : "-",
      cached.length > 0 ? fixed(Math.min(...cached), 1) : "-",
      fixed((r.jobBps ?? NaN) / MiB, 1),
      fixed(r.pinsS ?? NaN, 1),
      fixed(r.load ?? NaN, 1),
      r.problems.length > 0 ? `${r.problems.length} daemon error or stderr line(s), below` : "",
    ];
  });
  out(markdownTable(["N", "mode", "server bytes (x image)", "time to all cached (s)", "vs one node", "first node cached (s)", "job MiB/s", "pins returned (s)", "load", "notes"], rows));
  out("");
  out(
    `Server bytes: what the file server sent from the pins until every node served the image from its cache, less the job's own reads, over the image file's size (${fixed(imageFileBytes / MiB, 1)} MiB). ` +
      `Times from the moment the N \`pin\` commands were started (at once) until each node's mountdir/${FLEET.image} top mount was a loop device backed by a file in its cachedir; ` +
      `the wait ends after 30 s + twice what N nodes each reading the whole image from the server would take (">": not every node was cached by then). ` +
      `Job: one reader of the ${fixed(FLEET.jobBytes / MiB)} MiB job image file in datadir over the same period, in every run, the baseline's included (the link alone gives it ${fixed(aloneJobBps / MiB, 1)} MiB/s). ` +
      "Pins returned: until the last `pin` command had exited (N Node.js processes starting at once on this machine). Load: the machine's 1-minute load average when the fill ended.",
  );
  out("");
  out("Goals of issue 13, with peer fill on:");
  out("");
  const on = runs.filter((r) => r.mode === "on");
  const bytesRun = on.find((r) => r.n === FLEET.goalBytesNodes);
  if (!bytesRun) out(`- bytes from the file server <= ${FLEET.goalBytesX}x the image for N = ${FLEET.goalBytesNodes}: not measured (N = ${FLEET.goalBytesNodes} not in SM_FLEET_NODES)`);
  else if (bytesRun.serverBytes === undefined) out(`- bytes from the file server <= ${FLEET.goalBytesX}x the image for N = ${FLEET.goalBytesNodes}: no figure (the run failed)`);
  else {
    const x = bytesRun.serverBytes / imageFileBytes;
    const partial = allCachedS(bytesRun) === undefined;
    const verdict = x > FLEET.goalBytesX ? "not met" : partial ? "not known (the fill did not end)" : "met";
    out(`- bytes from the file server <= ${FLEET.goalBytesX}x the image for N = ${FLEET.goalBytesNodes}: ${partial ? ">= " : ""}${fixed(x, 2)}x, **${verdict}**`);
  }
  for (const r of on) {
    const limit = FLEET.goalTimeX * aloneS;
    const what = `- N = ${r.n}: every node cached within ${FLEET.goalTimeX}x one node alone (${fixed(limit, 1)} s)`;
    if (!r.cachedS || !Number.isFinite(limit)) {
      out(`${what}: no figure (${r.cachedS ? "no baseline: one node alone did not finish" : "the run failed"})`);
      continue;
    }
    const last = allCachedS(r);
    if (last === undefined) out(`${what}: not all after ${fixed(r.watchedS ?? NaN, 1)} s, **not met**`);
    else out(`${what}: ${fixed(last, 1)} s (${fixed(last / aloneS, 2)}x), **${last <= limit ? "met" : "not met"}**`);
  }
  const withProblems = runs.filter((r) => r.problems.length > 0);
  if (withProblems.length > 0) {
    out("");
    out("Errors the daemons logged:");
    out("");
    for (const r of withProblems) {
      const distinct = [...new Set(r.problems)];
      out(`- N = ${r.n}, ${modeName(r.mode)}: ${r.problems.length} line(s): ${distinct.slice(0, 4).join("; ")}${distinct.length > 4 ? `; ... (${distinct.length} distinct)` : ""}`);
    }
  }
}

async function inner(root: string): Promise<number> {
  const outerNs = process.env.SM_FLEET_OUTER_NS;
  if (!outerNs || readlinkSync("/proc/self/ns/mnt") === outerNs) throw new Error("fleet: not in a private mount namespace");
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(signal, () => {
      if (interrupted === undefined) {
        interrupted = signal;
        progress(`fleet: ${signal}: stopping at the next check and cleaning up (again to clean up at once)`);
        return;
      }
      progress(`fleet: ${signal} again: cleaning up now`);
      void undo.all().finally(() => process.exit(130));
    });
  }
  const started = performance.now();
  out(formatMachine(describeMachine()));
  out(`command: node build/bench/fleet.js (SM_FLEET_NODES=${FLEET.nodes.join(",")} SM_FLEET_MIB=${fixed(FLEET.imageBytes / MiB)} SM_FLEET_RATE_MBPS=${fixed(FLEET.rateBps / MiB)})`);
  out(await describeDisk(root));
  out("");

  const source = path.join(root, "server");
  const datadir = path.join(root, "data");
  const work = path.join(root, "work");
  for (const d of [source, datadir, work]) await mkdir(d, { recursive: true });
  progress(`fleet: building the images in ${source}`);
  await Promise.all([makeImage(path.join(source, `${FLEET.image}.sqfs`), FLEET.imageBytes, "fleet"), makeImage(path.join(source, `${FLEET.job}.sqfs`), FLEET.jobBytes, "job")]);
  const imageFileBytes = (await stat(path.join(source, `${FLEET.image}.sqfs`))).size;
  const server = await FileServer.start({ source, mountPoint: datadir, work, rateBps: FLEET.rateBps });
  const stopServer = undo.add(() => server.stop());
  const ctx: Ctx = { root, source, datadir, imageFile: path.join(datadir, `${FLEET.image}.sqfs`), jobFile: path.join(datadir, `${FLEET.job}.sqfs`), server };
  out(
    `File server: faultfs.py --direct-io --rate ${FLEET.rateBps} (${fixed(FLEET.rateBps / MiB)} MiB/s, one link shared by every read) over ${source}; ` +
      `image ${FLEET.image}.sqfs ${fixed(imageFileBytes / MiB, 1)} MiB (${fixed(FLEET.imageBytes / MiB)} MiB of random data, uncompressed squashfs), job image ${FLEET.job}.sqfs ${fixed(FLEET.jobBytes / MiB)} MiB. ` +
      `Daemons: interval ${FLEET.intervalS} s, capacity ${fixed((2 * (FLEET.imageBytes + FLEET.jobBytes)) / MiB)} MiB, one cachedir/mountdir/state_dir/runtime_dir each; peer fill on: peer_listen = 127.0.0.1:PORT (one each) and datadir/.scratch_manager/peer.key (32 random bytes, mode 600).`,
  );
  out("");
  const runs: FleetRun[] = [];
  let status = 0;
  try {
    progress("fleet: the job's reads alone");
    const aloneJobBps = await jobAlone(ctx);
    runs.push(await fleetRun(ctx, 1, "alone"));
    for (const n of FLEET.nodes) {
      for (const mode of ["off", "on"] as const) {
        checkInterrupted();
        const r = await fleetRun(ctx, n, mode);
        progress(`  result: ${JSON.stringify(r)}`);
        runs.push(r);
      }
    }
    report(runs, aloneJobBps, imageFileBytes);
  } finally {
    progress("fleet: stopping the file server");
    await setFleetKey(source, false).catch(() => undefined);
    await stopServer().catch((err: unknown) => {
      progress(`fleet: stopping the file server: ${err instanceof Error ? err.message : String(err)}`);
      status = 1;
    });
    await undo.all();
    const left = await leftovers(root);
    if (left.length > 0) {
      progress(`fleet: left behind: ${left.join("; ")}`);
      status = 1;
    }
  }
  out("");
  out(`(fleet: ${fixed((performance.now() - started) / 1000, 1)} s; load average at the end ${os.loadavg().map((x) => x.toFixed(2)).join(" ")})`);
  return status;
}

async function outer(): Promise<number> {
  if (process.getuid?.() !== 0) {
    console.error("fleet: run as root: it makes loop devices, mounts and a FUSE file system");
    return 2;
  }
  await mkdir("/work", { recursive: true });
  const root = mkdtempSync("/work/tmp-fleet-");
  const self = fileURLToPath(import.meta.url);
  // The inner process cleans up on Ctrl-C; this one must live on to check what it left.
  process.on("SIGINT", () => undefined);
  const child = spawnSync("unshare", ["--mount", "--propagation", "private", "--", process.execPath, self], {
    stdio: "inherit",
    env: { ...process.env, SM_FLEET_INNER: root, SM_FLEET_OUTER_NS: readlinkSync("/proc/self/ns/mnt") },
  });
  let status = child.status ?? 1;
  if (child.error) {
    console.error(`fleet: ${child.error.message}`);
    status = 1;
  }
  // The namespace is gone, its mounts with it, and with them the loop devices (autoclear). Check.
  const left = await leftovers(root);
  if (left.length > 0) {
    console.error(`fleet: left behind (${root} kept): ${left.join("; ")}`);
    return 1;
  }
  const entries = await readdir(root).catch(() => []);
  await removeRoot(root);
  progress(`fleet: removed ${root} (${entries.length} entries)`);
  return status;
}

async function main(): Promise<number> {
  const root = process.env.SM_FLEET_INNER;
  if (!root) return outer();
  try {
    return await inner(root);
  } catch (err) {
    console.error(`fleet: ${err instanceof Error ? (interrupted !== undefined ? err.message : (err.stack ?? err.message)) : String(err)}`);
    return interrupted !== undefined ? 130 : 1;
  }
}

process.exitCode = await main();

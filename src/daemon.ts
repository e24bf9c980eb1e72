import type { Logger } from "pino";
import { mkdir } from "node:fs/promises";
import { act } from "./act/apply.js";
import { run as realRun, type Runner } from "./lib/exec.js";
import { AttachJournal, releaseUnfinished } from "./act/mounts.js";
import { TransferPool, type CopyOutcome, type Transfer } from "./act/transfers.js";
import { Notifier } from "./act/notify.js";
import type { Config } from "./config.js";
import { errorMessage } from "./errors.js";
import { Observer, type ObserveRoots, type Snapshot } from "./observe/snapshot.js";
import { statFile } from "./observe/scan.js";
import { readLoopAt, readLoopDevices, type BackingId } from "./observe/loops.js";
import { Backoff } from "./plan/backoff.js";
import { actionDataset, type Action, type CopyView } from "./plan/diff.js";
import { reconcile, type Memory, type ReconcileInput, type Reconciled } from "./plan/reconcile.js";
import { Stats } from "./plan/stats.js";
import { Storage, type StorageView } from "./plan/storage.js";
import { PeerFill } from "./fleet/peer-fill.js";
import { afterActing, countStates } from "./report/build.js";
import { LogOnce } from "./report/log-once.js";
import { logCondition, tellNotices } from "./report/notices.js";
import { Publisher } from "./report/publish.js";
import type { StatusReport } from "./report/status.js";
import { readBootId, readDatadirMemory, writeDatadirMemory } from "./state/devices.js";
import { activePins, readPins, updatePins, type Pin } from "./state/pins.js";
import { takeRequests, writeReply, type Reply } from "./state/requests.js";
import { planEviction } from "./plan/requests.js";
import { RECOVERY_ROUNDS, workingDevice, type CacheDeviceCondition } from "./plan/cache-device.js";
import { LayerProbe } from "./observe/probe.js";
import { FeatureAdvertiser } from "./slurm/features.js";
import { ACTIVE_FEATURES_FILE, StagedSet, Stager } from "./slurm/stager.js";
import path from "node:path";
import type { StagedEntry } from "./slurm/queue.js";
import { KernelLog } from "./observe/kernel-log.js";
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { DeviceHealthWatch, readCacheDeviceHealth, type CacheDeviceHealth } from "./observe/device-health.js";
import { noDeadLayers, type DeadLayer } from "./plan/slow-layers.js";

/** The cache probes: a round every so often, of at most so many reads (observe/probe.ts). */
const PROBE_EVERY_MS = 5000;
const PROBE_PER_ROUND = 4;
/**
 * Slow layers read a round (about 5 operations on the file server each: at
 * 1,000 nodes, 1,000 a second). One is enough to see a stall within
 * scan_timeout, and a reconnect that killed every handle: the first dead one
 * found makes the others suspect.
 */
const PROBE_SLOW_PER_ROUND = 1;
/** The host name up to its first dot: a Slurm node's usual name. */
function shortHostname(): string {
  return hostname().split(".")[0] ?? hostname();
}

/** Microseconds since boot, from the machine's /proc/uptime (the clock of /dev/kmsg's records); 0 when unknown. */
function uptimeUs(): number {
  try {
    return Math.floor(Number(readFileSync("/proc/uptime", "utf8").split(" ")[0]) * 1e6) || 0;
  } catch {
    return 0;
  }
}

/** A probe round every 5 s, or every half scan_timeout if that is shorter (see LayerProbe's deadline). */
function probeEveryMs(config: Pick<Config, "scanTimeout">): number {
  return Math.min(PROBE_EVERY_MS, (config.scanTimeout * 1000) / 2);
}
/** Suspect slow layers read a round on top (a file system that reconnected: all its layers), and reads at once. */
const PROBE_URGENT_PER_ROUND = 32;
const PROBE_CONCURRENCY = 4;
/** The cache device's identity and SMART verdict (systeminformation): read this often, and given this long. */
const HEALTH_EVERY_MS = 3600_000;
const HEALTH_TIMEOUT_MS = 120_000;
const HEALTH_FIRST_AFTER_MS = 600_000;
import { occupiedBytes } from "./plan/policy.js";
import { systemClock, type Clock } from "./lib/clock.js";

export interface DaemonOptions {
  config: Config;
  logger: Logger;
  run?: Runner;
  roots?: ObserveRoots;
  clock?: Clock;
  /** NOTIFY_SOCKET, for tests; process.env's by default. */
  notifySocket?: string;
}

/**
 * The loop and its lifecycle. Each tick observes the machine, reconciles
 * (plan/reconcile.ts: pure), acts on the difference and publishes. It
 * remembers statistics, back-off and what it has already reported, never
 * what it did: a restart loses nothing.
 */
export class Daemon {
  config: Config;
  readonly logger: Logger;
  readonly transfers: TransferPool;
  /** Copies from and to the other nodes (fleet/); inert unless peer_listen is set and the fleet key is usable. */
  readonly peers: PeerFill;
  private readonly observer: Observer;
  private readonly run: Runner;
  private readonly clock: Clock;
  private readonly roots: ObserveRoots;
  private memory: Memory;
  /** Ends with the daemon: stops waiting for scans, and the scans themselves. */
  private readonly lifetime = new AbortController();
  private bootId?: string;
  private readonly journal: AttachJournal;
  private readonly once = new LogOnce();
  private readonly publisher: Publisher;
  /** Reads of cached copies that reach the cache device (observe/probe.ts), in the background. */
  private readonly probe: LayerProbe;
  /** The cache device's health, read rarely in the background (observe/device-health.ts). */
  private readonly health: DeviceHealthWatch;
  /** The datasets held, as Slurm node features (slurm_node; src/slurm/features.ts). */
  private features?: FeatureAdvertiser;
  /** The datasets of jobs about to start here, handed by the stager (src/slurm/stager.ts). */
  private readonly staged = new StagedSet();
  /** This daemon reads the queue for the cluster (slurm_stage). */
  private stager?: Stager;
  /** The kernel's read errors (/dev/kmsg), logged since start: evidence against the cache device, or a slow layer's file system. */
  private readonly kernelLog: KernelLog;
  private stopping = false;
  /** The last report published: what `evict` knows of the datasets. */
  private lastReport?: StatusReport;
  private stopped?: Promise<void>;
  private wakeUp?: () => void;

  constructor(options: DaemonOptions) {
    this.config = options.config;
    this.logger = options.logger;
    this.run = options.run ?? realRun;
    this.clock = options.clock ?? systemClock;
    this.roots = options.roots ?? { proc: "/proc", sys: "/sys" };
    this.observer = new Observer(this.config, this.run, this.roots, this.clock);
    this.observer.onBackingQuery = (devices) => this.logger.debug({ devices }, "asking losetup for the backing files' identity");
    this.memory = {
      storage: new Storage(this.config, this.clock.now()),
      stats: new Stats(this.config.period * 1000),
      backoff: new Backoff(),
      datasetFiles: new Set(),
      ticks: 0,
      quietTicks: 0,
      configGeneration: 0,
      ownedDirs: new Set(),
      evicting: new Set(),
      cacheDevice: workingDevice(this.clock.now()),
      slowLayers: noDeadLayers,
    };
    this.features = this.advertiser(this.config);
    this.kernelLog = new KernelLog(uptimeUs(), "/dev/kmsg", (why) => this.logger.info({ err: why }, "the kernel's log cannot be read; read errors are seen by the probes alone"));
    this.health = new DeviceHealthWatch(this.clock, HEALTH_EVERY_MS, HEALTH_FIRST_AFTER_MS, (mount) => readCacheDeviceHealth(mount, HEALTH_TIMEOUT_MS));
    this.probe = new LayerProbe(this.run, this.clock, {
      // A stalled server is seen by the reads of its images within scan_timeout: a round at least every half of it, each read given the rest.
      everyMs: () => probeEveryMs(this.config),
      perRound: PROBE_PER_ROUND,
      slowPerRound: PROBE_SLOW_PER_ROUND,
      urgentPerRound: PROBE_URGENT_PER_ROUND,
      concurrency: PROBE_CONCURRENCY,
      // The whole scan_timeout: a shorter deadline made a loaded machine's slow read a stall (and held datadir).
      timeoutMs: () => this.config.scanTimeout * 1000,
      lifetime: this.lifetime.signal,
      sysRoot: this.roots.sys,
      // The probes' reads are not jobs' reads: taken off the devices' read counters.
      onLoopRead: (device, bytes, failed) => this.observer.probeRead(device, bytes, failed),
    });
    this.journal = new AttachJournal(this.config.runtimeDir);
    this.peers = new PeerFill(this.config, {
      run: this.run,
      logger: this.logger,
      channel: (op, signal) => this.observer.datadir.exclusive(op, signal),
      clock: this.clock,
      lifetime: this.lifetime.signal,
      onStage: (by, entries) => {
        this.staged.receive(by, entries, this.clock.now());
        this.logger.info({ by, datasets: entries.map((e) => e.dataset), jobs: [...new Set(entries.map((e) => e.jobId))] }, entries.length > 0 ? `staging ${entries.length} datasets for jobs about to start here` : "nothing to stage any more");
        this.wake();
      },
    });
    const notifier = new Notifier(this.run, "notifySocket" in options ? options.notifySocket : process.env.NOTIFY_SOCKET, process.env.WATCHDOG_USEC, this.clock);
    this.publisher = new Publisher(this.logger, notifier, this.once);
    this.transfers = new TransferPool({
      run: this.run,
      commandTimeoutS: this.config.commandTimeout,
      maxCopies: this.config.maxCopies,
      copyBwlimit: this.config.copyBwlimit,
      logger: this.logger,
      clock: this.clock,
      onSettled: (name, outcome, t) => this.onCopySettled(name, outcome, t),
      fill: (t, fromServer) => this.peers.fill(t, fromServer),
      // The image is on the file server: checked through datadir's channel, never in the daemon's threads.
      statImage: (file, signal) => this.observer.datadir.exclusive(() => statFile(this.run, file, this.config.scanTimeout * 1000, signal), signal),
    });
  }

  get stats(): Stats {
    return this.memory.stats;
  }

  get ticks(): number {
    return this.memory.ticks;
  }

  /** Ticks that reused the last plan, since start (for the log and tests). */
  get quietTicks(): number {
    return this.memory.quietTicks;
  }

  /**
   * Before the first tick: release the loop devices a killed daemon had
   * attached and not yet handed to the kernel (act/mounts.ts), and read what
   * is remembered of datadir (state/devices.ts: the file systems it has been
   * on in this boot, so that the daemon's own mounts are recognised after
   * datadir was remounted, even across a restart; whether it is a mount point).
   */
  async init(): Promise<void> {
    await this.peers.init();
    try {
      const released = await releaseUnfinished(this.run, this.journal, await readLoopDevices(this.roots.sys), this.roots.sys, this.config.commandTimeout * 1000);
      if (released.length > 0) this.logger.warn({ devices: released }, "released loop devices a killed daemon had attached but not yet handed to the kernel");
    } catch (err) {
      this.logger.warn({ err: errorMessage(err) }, "cannot release the loop devices of an interrupted attach");
    }
    try {
      this.bootId = await readBootId(this.roots.proc);
      this.memory = { ...this.memory, storage: new Storage(this.config, this.clock.now(), await readDatadirMemory(this.config.stateDir, this.bootId)) };
    } catch (err) {
      this.logger.warn({ err: errorMessage(err) }, "cannot read the file systems datadir was on; mounts made before a remount of datadir will be left alone");
    }
  }

  /** One pass of the loop: observe, reconcile, act, publish. */
  async tick(): Promise<StatusReport> {
    const started = this.clock.monotonic();
    const config = this.config;
    await this.serveRequests(config);
    const input = await this.observe(config);
    const out = reconcile(input, this.memory, config, input.observation.now);
    this.memory = out.memory;
    if (out.cacheDeviceChanged) this.logCacheDevice(out.cacheDeviceChanged.after, out.cacheDeviceChanged.before);
    for (const dead of out.deadLayers) this.logDeadLayer(dead);
    await this.noteStorage(out.storage);
    if (out.notices) tellNotices(this.logger, this.once, out.notices);
    let report = out.report;
    if (out.actions.length > 0) {
      const unmountedSlow = await this.actOn(out.actions, out.snapshot, config, input.observation.now);
      const copies = this.copyViews();
      report = afterActing(report, { copies, counters: this.transfers.counters, usedBytes: occupiedBytes(out.snapshot, copies), unmountedSlow, backoff: this.memory.backoff });
    }
    // Not the copies acted on this tick: a loop device just detached is no evidence against the device.
    const acted = new Set(out.actions.map(actionDataset));
    this.probe.changed([...acted].filter((name): name is string => name !== undefined));
    this.probe.kick(out.probeTargets.filter((t) => !acted.has(t.dataset)));
    this.health.kick(input.observation.cacheMount, (health, previous) => this.logHealth(health, previous));
    const health = this.health.current;
    if (health && report.cacheDevice) report = { ...report, cacheDevice: { ...report.cacheDevice, health: { device: health.device, disk: health.disk, model: health.model, smart: health.smart, message: health.message } } };
    this.features?.update(report);
    if (this.config.slurmStage !== "no") {
      this.stager ??= new Stager(this.run, this.clock, () => this.config.commandTimeout * 1000, (node, entries) => this.handTo(node, entries), path.join(this.config.runtimeDir, ACTIVE_FEATURES_FILE));
      this.stager.kick(this.config.slurmStage === "yes");
    } else this.stager = undefined;
    const states = new Map(report.datasets.map((d) => [d.name, d.state]));
    this.staged.settle(this.clock.now(), (name) => states.get(name) === "cached");
    report = { ...report, staging: { hits: this.staged.hits, misses: this.staged.misses, stager: this.stager ? { ...this.stager.state, errors: { ...this.stager.state.errors } } : undefined } };
    if (this.features) report = { ...report, slurm: { ...this.features.state, features: [...this.features.state.features] } };
    await this.publish(report, out, started);
    this.lastReport = report;
    if (out.released) {
      this.logger.info({ all: this.memory.releasing?.all === true }, this.memory.releasing?.all ? "released: every mount of ours removed and the cache emptied; stopping" : "released: the cache emptied; stopping");
      this.stopping = true;
    }
    return report;
  }

  /** `scratch_manager evict` and `release` (state/requests.ts): answered at once, done by the next ticks. */
  private async serveRequests(config: Config): Promise<void> {
    let taken: Awaited<ReturnType<typeof takeRequests>>;
    try {
      taken = await takeRequests(config.runtimeDir);
    } catch (err) {
      this.logger.error({ err: errorMessage(err) }, "cannot read the requests");
      return;
    }
    for (const bad of taken.bad) this.logger.warn({ request: bad }, "ignored a request that is not one");
    for (const request of taken.requests) {
      const reply = request.kind === "evict" ? await this.evict(request.names, request.force, config) : this.release(request.all);
      this.logger.info({ request: request.kind, ok: reply.ok }, reply.lines.join("; "));
      await writeReply(config.runtimeDir, request.id, reply).catch((err: unknown) => this.logger.error({ err: errorMessage(err) }, "cannot write a request's reply"));
    }
  }

  /**
   * Drop cached copies now: each named dataset leaves the cache (its cache
   * mount lazily unmounted, its copy deleted) and its reads are forgotten,
   * so it comes back only once read again. A pinned one needs --force,
   * which removes its pins (every owner's; not those of the configuration file).
   */
  private async evict(names: readonly string[], force: boolean, config: Config): Promise<Reply> {
    const plan = planEviction(names, force, this.lastReport?.datasets ?? [], config.pins);
    if (plan.unpin.length > 0) await updatePins(config.stateDir, this.clock, (pins) => pins.filter((p) => !plan.unpin.includes(p.name)));
    for (const name of plan.forget) this.memory.stats.forget(name);
    this.memory = { ...this.memory, evicting: new Set([...this.memory.evicting, ...plan.evict]) };
    this.wake();
    return { ok: plan.ok, lines: plan.lines };
  }

  private logDeadLayer(dead: DeadLayer): void {
    this.logger.warn({ dataset: dead.dataset, device: dead.device, mountId: dead.mountId, evidence: dead.evidence }, `slow layer of ${dead.dataset} is dead: ${dead.evidence}; it is attached again from datadir (files open on the dead layer cannot be saved)`);
  }

  /**
   * The stager hands a Slurm node its part: this node's own at once,
   * another's through its peer listener: the one its live record names, or
   * else the node's name at this node's own peer port (a node that holds
   * nothing publishes no record; the fleet's nodes share one configuration).
   */
  private async handTo(node: string, entries: StagedEntry[]): Promise<"ok" | string> {
    const self = this.features?.state.node ?? shortHostname();
    if (node === self) {
      this.staged.receive("self", entries, this.clock.now());
      return "ok";
    }
    const peer = this.peers.peers().find((p) => {
      const host = p.slice(0, p.lastIndexOf(":")).replace(/^\[|\]$/g, "");
      return host === node || host.split(".")[0] === node;
    });
    const own = this.peers.node;
    return this.peers.stage(peer ?? `${node}:${own.slice(own.lastIndexOf(":") + 1)}`, entries);
  }

  /** The node's feature advertiser, kept across a reload that names the same node. */
  private advertiser(config: Config): FeatureAdvertiser | undefined {
    if (config.slurmNode === undefined) return undefined;
    const node = config.slurmNode === "auto" ? shortHostname() : config.slurmNode;
    if (this.features?.state.node === node) return this.features;
    return new FeatureAdvertiser(this.run, this.clock, node, config.commandTimeout * 1000, (message) => this.logger.warn({ node, err: message }, `cannot tell Slurm the datasets node ${node} holds: ${message}; jobs are placed without them until it works`));
  }

  private logHealth(health: CacheDeviceHealth, previous: CacheDeviceHealth | undefined): void {
    const fields = { dir: "cachedir", device: health.device, disk: health.disk, model: health.model, serial: health.serial, smart: health.smart };
    if (health.smart === "predicted-failure") this.logger.warn(fields, `cache device predicted to fail (SMART): ${health.message}; replace it before it fails (the cache falls back to the slow tier when it does)`);
    else if (previous?.smart === "predicted-failure") this.logger.info(fields, `cache device no longer predicted to fail: ${health.message}`);
    else this.logger.info(fields, `cache device: ${health.message}`);
  }

  private logCacheDevice(c: CacheDeviceCondition, before: CacheDeviceCondition): void {
    const dir = { dir: "cachedir", path: this.config.cachedir };
    if (c.reason === "ReadOnly") this.logger.warn({ ...dir, reason: c.reason, evidence: c.message }, `cache file system read-only: ${c.message}; the cached copies stay served, nothing is copied or deleted until it is writable`);
    else if (c.up && before.reason === "ReadOnly") this.logger.info(dir, "cache file system writable again; the cache resumes");
    else if (c.up) this.logger.info(dir, `cache device working again (${RECOVERY_ROUNDS} rounds of probes read it); the cache resumes`);
    else this.logger.warn({ dir: "cachedir", path: this.config.cachedir, reason: c.reason, evidence: c.message }, `cache device failing: ${c.message}; its cache mounts are taken off (new opens read the slow tier; files open on them may fail), no copy is made until it reads again`);
  }

  /** Drop the cache (all: and unmount every mount of ours), then stop: for a rollback or an uninstall. */
  private release(all: boolean): Reply {
    this.memory = { ...this.memory, releasing: { all: all || this.memory.releasing?.all === true } };
    this.wake();
    return { ok: true, lines: [all ? "releasing every mount of ours and the cache, then stopping" : "releasing the cache, then stopping; the datasets stay mounted from the file server"] };
  }

  /** The machine and this tick's scans, the pins, and the copy pool as it was before cachedir was scanned. */
  private async observe(config: Config): Promise<ReconcileInput> {
    // A copy that finishes after the scan of cachedir and before the diff is in neither: it would be started again.
    const copiesAtScan = this.copyViews();
    const copying = [...copiesAtScan.values()].some((t) => t.state === "running");
    const probeRound = this.probe.take();
    if (probeRound) {
      const failed = probeRound.results.flatMap((r) => (r.ok ? [] : [`${r.target.tier} ${r.target.dataset}: ${r.message} (${r.code})`]));
      this.logger.debug({ reads: probeRound.results.length, failed }, "probe round");
    }
    const observation = await this.observer.observe(config, this.scanWaitMs(), this.lifetime.signal, copying);
    // Pins: from the config file, and from `scratch_manager pin` (state_dir), which may have expired.
    const pins = await this.readPins(observation.now);
    return { observation, pins, copiesAtScan, copies: this.copyViews(), counters: this.transfers.counters, pid: process.pid, probeRound, kernelErrors: this.kernelLog.read(), staged: this.staged.current(observation.now) };
  }

  /** Act, for at most `interval` (the rest is for the next ticks); failures put the dataset in back-off. @returns slow mounts still to do. */
  private async actOn(actions: Action[], snapshot: Snapshot, config: Config, now: number): Promise<number> {
    const attaching = actions.flatMap((a) => (a.kind === "mount" ? [a.source] : []));
    // Which file each mount attaches, as this tick's scans saw it: the new loop device's backing identity.
    const identities = new Map([...snapshot.images, ...snapshot.cacheFiles].flatMap((e) => (e.dev === undefined ? [] : [[e.path, { dev: e.dev, ino: e.ino }] as const])));
    await this.publisher.attempt("attach journal", () => this.journal.begin(attaching));
    const outcome = await act(actions, {
      run: this.run,
      transfers: this.transfers,
      logger: this.logger,
      procRoot: this.roots.proc,
      commandTimeoutMs: config.commandTimeout * 1000,
      onMounted: (target, source) => this.noteAttached(target, source, identities),
      // From now: a tick whose observing took longer than its interval still acts.
      deadline: { clock: this.clock, at: this.clock.monotonic() + config.interval * 1000 },
    });
    if (attaching.length > 0) await this.publisher.attempt("attach journal", () => this.journal.end());
    // Files deleted from cachedir this tick: a scan of it started before (one slower than its tick) is out of date.
    if (outcome.done.size > 0) this.observer.cachedir.invalidate();
    const failed = this.memory.backoff.afterActing(outcome.done, outcome.failures.map((f) => f.action), now, config.interval * 1000);
    for (const { name, entry } of failed) this.logger.warn({ dataset: name, failures: entry.failures, retryInMs: entry.delayMs }, "dataset in back-off");
    const owned = new Set(this.memory.ownedDirs);
    for (const a of outcome.done) {
      if (a.kind === "mkdir") owned.add(a.path);
      if (a.kind === "rmdir") owned.delete(a.path);
    }
    this.memory = { ...this.memory, ownedDirs: owned };
    return actions.filter((a) => a.kind === "mount" && a.tier === "slow" && !outcome.done.has(a)).length;
  }

  /** Peer fill kept up; the tick's log line; the status file, metrics, systemd. */
  private async publish(report: StatusReport, out: Reconciled, started: number): Promise<void> {
    await this.publisher.attempt("peer fill", () => this.peers.tick(this.config, out.holdings));
    const ms = Math.round(this.clock.monotonic() - started);
    const full: StatusReport = { ...report, tick: { count: this.memory.ticks, ms } };
    if (this.config.peerListen) full.peers = this.peers.view();
    if (out.quiet) this.logger.debug({ datasets: full.datasets.length, quiet: true, ms }, "tick");
    else this.logger.debug({ datasets: full.datasets.length, ...countStates(full), ...out.space, actions: out.actions.length, ms }, "tick");
    await this.publisher.publish(full, this.config, this.memory.quiet?.bodyKey);
  }

  /** The copy pool as the plan and the report see it. */
  private copyViews(): Map<string, CopyView> {
    const views = new Map<string, CopyView>();
    for (const [name, t] of this.transfers.all) {
      const view: CopyView = { name: t.name, imageFile: t.imageFile, size: t.size, mtimeMs: t.mtimeMs, tmpPath: t.tmpPath, state: t.state, startedAt: t.startedAt };
      const from = this.peers.sourceOf(t.imageFile);
      if (from !== undefined) view.from = from;
      views.set(name, view);
    }
    return views;
  }

  /**
   * How long a tick waits for a scan: a scan that takes longer is taken by a
   * later tick, so that the loop keeps its pace (status, metrics, watchdog)
   * even while the file server does not answer.
   */
  private scanWaitMs(): number {
    return Math.min(this.config.interval, this.config.scanTimeout) * 1000;
  }

  /** Log each change of a directory's condition once; remember a new file system of datadir; take its real path. */
  private async noteStorage(view: StorageView): Promise<void> {
    for (const { before, after } of view.changed) logCondition(this.logger, before, after);
    const real = view.data?.realPath;
    if (view.dataFresh && real !== undefined && real !== this.config.datadir) {
      this.logger.info({ datadir: this.config.datadir, realPath: real }, "datadir resolved");
      this.config = { ...this.config, datadir: real };
      this.memory = { ...this.memory, configGeneration: this.memory.configGeneration + 1 };
    }
    const storage = this.memory.storage;
    if (view.newDatadirDev !== undefined && storage.datadirDevices.size > 1) {
      this.logger.info({ dir: "datadir", path: this.config.datadir, dev: view.newDatadirDev }, "datadir is on another file system; its images are there");
    }
    const bootId = this.bootId;
    if (view.memoryChanged && bootId !== undefined) {
      await this.publisher.attempt("datadir memory", async () => {
        await mkdir(this.config.stateDir, { recursive: true, mode: 0o755 });
        await writeDatadirMemory(this.config.stateDir, bootId, storage.memory);
      });
    }
  }

  /**
   * SIGHUP: a new configuration applies from the next tick. The directories
   * cannot change (the mounts under the old ones would be orphaned): the
   * caller rejects such a file, as any invalid one, and keeps the old.
   */
  reconfigure(config: Config): void {
    // datadir keeps the real path the daemon resolved (the file names it as written).
    this.config = { ...config, datadir: this.config.datadir };
    this.features = this.advertiser(this.config);
    // A reload is also how an administrator says the cache device was repaired: trusted again at once.
    if (!this.memory.cacheDevice.up) this.logCacheDevice(workingDevice(this.clock.now()), this.memory.cacheDevice);
    this.memory = { ...this.memory, configGeneration: this.memory.configGeneration + 1, cacheDevice: workingDevice(this.clock.now()) };
    // A reload is also how an administrator confirms a disappearance held back (plan/availability.ts).
    if (this.memory.storage.confirm()) this.logger.warn({ dir: "datadir", path: this.config.datadir }, "datadir: the images that vanished are taken as removed at the next scan, as confirmed by the reload");
    this.memory.stats.setPeriod(config.period * 1000);
    this.transfers.reconfigure({ maxCopies: config.maxCopies, copyBwlimit: config.copyBwlimit, commandTimeoutS: config.commandTimeout });
    this.peers.reconfigure(this.config);
    this.wake();
  }

  private async readPins(now: number): Promise<Map<string, number | undefined>> {
    let stored: Pin[] = [];
    try {
      stored = await readPins(this.config.stateDir);
      this.once.report("pins-file", []);
    } catch (err) {
      // A damaged pins file must not stop the cache: keep serving with the config's pins.
      const message = `cannot read pins: ${errorMessage(err)}`;
      this.once.report("pins-file", [{ key: "read", signature: message, log: () => this.logger.error(message) }]);
    }
    const pins = activePins(stored, now);
    for (const name of this.config.pins) pins.set(name, undefined);
    return pins;
  }

  /** Tick every `interval` seconds until stop(); a finished copy wakes it early so the copy is mounted at once. */
  async runLoop(): Promise<void> {
    while (!this.stopping) {
      const started = this.clock.monotonic();
      try {
        await this.tick();
      } catch (err) {
        // A transient failure (NFS hiccup, a file vanishing mid-read) must not kill the daemon; nothing was half-done.
        this.logger.error({ err: errorMessage(err) }, "tick failed");
      }
      if (this.stopping) break;
      const wake = new AbortController();
      this.wakeUp = () => wake.abort();
      await this.clock.sleep(Math.max(0, this.config.interval * 1000 - (this.clock.monotonic() - started)), wake.signal);
      this.wakeUp = undefined;
    }
  }

  wake(): void {
    this.wakeUp?.();
  }

  /** SIGTERM: cancel copies (their temporary files are removed), leave every mount in place. */
  stop(): Promise<void> {
    // The signal handler and the end of runLoop both stop: do it once, and let both wait for it.
    this.stopped ??= (async () => {
      this.stopping = true;
      // A tick waiting for a scan of a dead server stops waiting; the scan's child is killed and left behind.
      this.lifetime.abort();
      this.wake();
      await this.publisher.stopping("stopping: cancelling copies, leaving mounts in place");
      await this.transfers.cancelAll("daemon stopping");
      await this.peers.stop();
      await this.publisher.close();
    })();
    return this.stopped;
  }

  logCacheBytes(): void {
    this.logger.info({ bytes: this.memory.stats.cacheBytesServed }, "bytes served from cache");
  }

  private async noteAttached(target: string, source: string, identities: ReadonlyMap<string, BackingId>): Promise<void> {
    const loop = await readLoopAt(target, this.roots);
    if (!loop) return;
    this.memory.stats.noteAttached(loop.device.name, loop.device.backingFile, loop.readBytes);
    this.observer.attached(loop.device, identities.get(source));
  }

  private onCopySettled(name: string, outcome: CopyOutcome, t: Transfer): void {
    void this.peers.settled(t.imageFile, t.dest, outcome.ok);
    // A scan of cachedir under way may predate the copy's rename (or its temporary file's removal).
    this.observer.cachedir.invalidate();
    if (outcome.ok) this.memory.backoff.succeeded(name);
    else if (!outcome.cancelled) {
      const entry = this.memory.backoff.fail(name, this.clock.now(), this.config.interval * 1000);
      this.logger.warn({ dataset: name, failures: entry.failures, retryInMs: entry.delayMs }, "dataset in back-off");
    }
    this.wake();
  }
}

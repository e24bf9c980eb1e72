import type { Logger } from "pino";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { act } from "./act/apply.js";
import { run as realRun, type Runner } from "./lib/exec.js";
import { AttachJournal, releaseUnfinished } from "./act/mounts.js";
import { TransferPool, type CopyOutcome, type Transfer } from "./act/transfers.js";
import type { Config } from "./config.js";
import { errorMessage } from "./errors.js";
import { Observer, type ObserveRoots, type Snapshot } from "./observe/snapshot.js";
import { statFile } from "./observe/scan.js";
import { Storage, type StorageView } from "./plan/storage.js";
import type { LoopDevice } from "./observe/loops.js";
import type { MountEntry } from "./observe/mountinfo.js";
import { applyHolds, type DirCondition, type Holds } from "./plan/availability.js";
import { catalogue, type Catalog } from "./plan/catalog.js";
import { actionDataset, diff, type Action } from "./plan/diff.js";
import { layerStacks, mountedImages, provisionalImages, relocateDetached, tierOf } from "./plan/layers.js";
import { readLoopAt, readLoopDevices, type BackingId } from "./observe/loops.js";
import { decide } from "./plan/decide.js";
import { budget, occupiedBytes, writableBytes } from "./plan/policy.js";
import { Stats } from "./plan/stats.js";
import { Notifier } from "./act/notify.js";
import type { Layer } from "./plan/layers.js";
import type { Holding } from "./fleet/server.js";
import { Metrics } from "./report/metrics.js";
import { STATUS_VERSION, type DatasetStatus, type StatusReport } from "./report/status.js";
import { statusBody, writeStatusFile } from "./report/status-file.js";
import { readBootId, readDatadirMemory, writeDatadirMemory } from "./state/devices.js";
import { activePins, readPins, type Pin } from "./state/pins.js";
import { formatBytes } from "./units.js";
import { PeerFill } from "./fleet/peer-fill.js";
import { systemClock, type Clock } from "./lib/clock.js";

/** A tick's view of the world, after observing and before planning. */
interface TickInput {
  config: Config;
  now: number;
  view: StorageView;
  snapshot: Snapshot;
  pins: Map<string, number | undefined>;
  /** The copies as they were before cachedir was scanned. */
  copiesAtScan: Map<string, Transfer>;
  holds: Holds;
  stacks: () => Map<string, Layer[]>;
  /** What the plan is made of, but time and the read statistics (quietKey). */
  key: () => string;
}

/** The last plan that had nothing to do, kept while its inputs are unchanged. */
interface QuietPlan {
  key: string;
  catalog: Catalog;
  report: StatusReport;
  holdings: Holding[];
  until: number;
  bodyKey: string;
}

interface TickPlan {
  catalog: Catalog;
  stacks: Map<string, Layer[]>;
  space: ReturnType<typeof budget>;
  actions: Action[];
  /** Actions wanted before the holds: any means the plan is not settled. */
  wantedCount: number;
  problems: string[];
}

export interface DaemonOptions {
  config: Config;
  logger: Logger;
  run?: Runner;
  roots?: ObserveRoots;
  clock?: Clock;
  /** NOTIFY_SOCKET, for tests; process.env's by default. */
  notifySocket?: string;
}

/** Datasets cached and being copied, as the status report says (one definition for the log, the status and systemd). */
function countStates(report: StatusReport): { cached: number; copying: number } {
  return { cached: report.datasets.filter((d) => d.state === "cached").length, copying: report.datasets.filter((d) => d.state === "copying").length };
}

/** After a failure a dataset is left alone for interval x 2^failures, at most this long. */
const MAX_BACKOFF_MS = 3600 * 1000;

/**
 * The reconciler: each tick observes the machine, plans what it wants, and
 * acts on the difference. It remembers only statistics, back-off and what it
 * has already reported, never what it did: a restart loses nothing.
 */
export class Daemon {
  config: Config;
  readonly logger: Logger;
  readonly stats: Stats;
  readonly transfers: TransferPool;
  private readonly observer: Observer;
  private readonly run: Runner;
  private readonly clock: Clock;
  private readonly roots: ObserveRoots;
  private previous?: Snapshot;
  /** What the daemon believes of datadir and cachedir (observe/storage.ts). */
  private storage: Storage;
  /** Image files of the last catalog's datasets: what a scan of datadir is expected to list (AssessInput.known). */
  private lastDatasetFiles = new Set<string>();
  /** Ends with the daemon: stops waiting for scans, and the scans themselves. */
  private readonly lifetime = new AbortController();
  private bootId?: string;
  private readonly journal: AttachJournal;
  private readonly backoff = new Map<string, { failures: number; until: number }>();
  /** Mount points made by this process, so that one left empty can be removed (see DiffInput.ownedDirs). */
  private readonly ownedDirs = new Set<string>();
  private readonly reported = new Map<string, string>();
  private stopping = false;
  private stopped?: Promise<void>;
  private wakeUp?: () => void;
  ticks = 0;
  private readonly notifier: Notifier;
  private readonly metrics = new Metrics();
  /** The last tick that planned and had nothing to do (see tick: a quiet tick). */
  private lastQuiet?: QuietPlan;
  /** Bumped when the configuration changes (a reload, datadir resolved): part of the quiet key. */
  private configGeneration = 0;
  /** Ticks that reused the last plan, since start (for the log and tests). */
  quietTicks = 0;
  /** The status file's body (all but the per-tick fields) for the report of `bodyKey`. */
  private statusBody?: { key: string; json: string };
  /** Copies from and to the other nodes (fleet/); inert unless peer_listen is set and the fleet key is usable. */
  readonly peers: PeerFill;
  private metricsServer?: { close(): Promise<void>; port: number; listen: string };

  constructor(options: DaemonOptions) {
    this.config = options.config;
    this.logger = options.logger;
    this.run = options.run ?? realRun;
    this.clock = options.clock ?? systemClock;
    this.roots = options.roots ?? { proc: "/proc", sys: "/sys" };
    this.observer = new Observer(this.config, this.run, this.roots, this.clock);
    this.observer.onBackingQuery = (devices) => this.logger.debug({ devices }, "asking losetup for the backing files' identity");
    this.storage = new Storage(this.config, this.clock.now());
    this.journal = new AttachJournal(this.config.runtimeDir);
    this.stats = new Stats(this.config.period * 1000);
    this.peers = new PeerFill(this.config, {
      run: this.run,
      logger: this.logger,
      channel: (op, signal) => this.observer.datadir.exclusive(op, signal),
      clock: this.clock,
      lifetime: this.lifetime.signal,
    });
    this.notifier = new Notifier(this.run, "notifySocket" in options ? options.notifySocket : process.env.NOTIFY_SOCKET, process.env.WATCHDOG_USEC, this.clock);
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
      this.storage = new Storage(this.config, this.clock.now(), await readDatadirMemory(this.config.stateDir, this.bootId));
    } catch (err) {
      this.logger.warn({ err: errorMessage(err) }, "cannot read the file systems datadir was on; mounts made before a remount of datadir will be left alone");
    }
  }

  /**
   * One pass of the loop: observe, believe or hold, catalogue and measure,
   * then either renew the last plan's report (a quiet tick: nothing read,
   * nothing changed) or plan, act and tell.
   */
  async tick(): Promise<StatusReport> {
    const started = this.clock.monotonic();
    const seen = await this.observeTick(this.config);
    const last = this.lastQuiet !== undefined && this.lastQuiet.key === seen.key() ? this.lastQuiet : undefined;
    const catalog = this.catalogueTick(seen, last);
    if (last && seen.now < last.until && seen.now - this.stats.lastAnyReadAt > seen.config.period * 1000) return this.quietTick(seen, last, started);
    const plan = this.planTick(seen, catalog);
    const acted = await this.actTick(seen, plan);
    return this.tellTick(seen, plan, acted, started);
  }

  /** 1. Observe the machine and this tick's scans; 2. believe them or hold ("unavailable" is never "empty"); the pins. */
  private async observeTick(config: Config): Promise<TickInput> {
    // Copies as they were before cachedir was scanned: one that finishes after the scan and before
    // diff is in neither the scan nor the pool, and would be started again (a second copy).
    const copiesAtScan = new Map(this.transfers.all);
    const copying = [...this.transfers.all.values()].some((t) => t.state === "running");
    const observation = await this.observer.observe(config, this.scanWaitMs(), this.lifetime.signal, copying);
    const now = observation.now;
    const loops = relocateDetached(observation.loops, this.storage.datadirDevices, config);
    const view = this.storage.update(observation, this.knownImages(observation.mounts, loops), config);
    await this.noteStorage(view);
    const partial: Snapshot = {
      now,
      images: [],
      probes: new Map(),
      cacheFiles: view.cache?.listing.entries ?? [],
      mounts: observation.mounts,
      loops,
      readBytes: observation.readBytes,
      cacheFs: view.cache?.fs ?? { totalBytes: 0, freeBytes: 0 },
    };
    // Before any scan of datadir was believed (started while it is away), the datasets are what is mounted.
    const { images, probes } = view.data ? { images: view.data.listing.entries, probes: view.data.probes } : provisionalImages(partial, config);
    const snapshot: Snapshot = { ...partial, images, probes };
    // Pins: from the config file, and from `scratch_manager pin` (state_dir), which may have expired.
    const pins = await this.readPins(now);
    // The mount stacks, and the quiet key (a megabyte string at 10,000 datasets): built only when needed.
    let stacksMemo: Map<string, Layer[]> | undefined;
    let keyMemo: string | undefined;
    return {
      config,
      now,
      view,
      snapshot,
      pins,
      copiesAtScan,
      holds: { datadir: !view.dataFresh, cachedir: !view.cacheFresh },
      stacks: () => (stacksMemo ??= layerStacks(snapshot, config)),
      key: () => (keyMemo ??= this.quietKey(view, observation.mounts, loops, pins, copiesAtScan.size, now)),
    };
  }

  /** 3. Which images are datasets, which are refused, which are still being written; 4. read statistics over the window. */
  private catalogueTick(seen: TickInput, last: QuietPlan | undefined): Catalog {
    const { snapshot, config, view } = seen;
    const catalog = last ? last.catalog : catalogue(snapshot, this.previous, config, mountedImages(seen.stacks()));
    if (view.dataFresh) this.lastDatasetFiles = new Set([...catalog.datasets.values()].map((d) => d.imageFile));
    if (!last) this.reportRefusals(catalog);
    this.stats.update(snapshot, config, catalog.nameOfFile, [...catalog.datasets.keys(), ...catalog.pending]);
    return catalog;
  }

  /**
   * A quiet tick: nothing read within the window (every rate is 0), nothing
   * changed, no time-bound event due (back-off, max_idle): the last plan
   * stands and was done. Only the report is renewed.
   */
  private async quietTick(seen: TickInput, last: QuietPlan, started: number): Promise<StatusReport> {
    if (seen.view.dataFresh) this.previous = seen.snapshot;
    this.ticks++;
    this.quietTicks++;
    const report: StatusReport = { ...last.report, writtenAt: seen.now, tick: { count: this.ticks, ms: Math.round(this.clock.monotonic() - started) }, cacheBytesServed: this.stats.cacheBytesServed };
    report.storage = { datadir: this.storage.datadir, cachedir: this.storage.cachedir };
    await this.attempt("peer fill", () => this.peers.tick(this.config, last.holdings));
    if (seen.config.peerListen) report.peers = this.peers.view();
    this.logger.debug({ datasets: report.datasets.length, quiet: true, ms: report.tick.ms }, "tick");
    await this.publish(report, countStates(report), last.bodyKey);
    return report;
  }

  /**
   * 5. Decide (plan/decide.ts): the pins that fit, then the policy, within
   * the budget (capacity, less copies held open, within keep_free); copies
   * admitted into free space. 6. The difference between what is and what
   * should be, less what a directory that cannot be believed forbids.
   */
  private planTick(seen: TickInput, catalog: Catalog): TickPlan {
    const { snapshot, config, now, pins, copiesAtScan, holds } = seen;
    const stacks = seen.stacks();
    const space = budget(snapshot, config);
    const { cached, admitted, pinProblems } = decide({
      datasets: [...catalog.datasets.values()],
      pending: catalog.pending,
      pinned: new Set(pins.keys()),
      policy: config.policy,
      rate: (name) => this.stats.rate(name),
      fastRate: (name) => this.stats.fastRate(name),
      idle: (name) => {
        const lastRead = this.stats.get(name)?.lastReadAt;
        return config.maxIdle > 0 && lastRead !== undefined && now - lastRead > config.maxIdle * 1000;
      },
      copying: new Set([...copiesAtScan.keys(), ...this.transfers.all.keys()]),
      space: {
        capacity: space.capacity,
        budget: space.bytes,
        ghosts: space.ghosts,
        occupied: occupiedBytes(snapshot, this.transfers.all),
        writable: writableBytes(snapshot, this.transfers.all) - space.keepFree,
      },
    });
    const frozen = new Set([...this.backoff].filter(([, b]) => b.until > now).map(([name]) => name));
    const wanted = diff({ config, catalog, stacks, cacheFiles: snapshot.cacheFiles, cached, transfers: new Map([...copiesAtScan, ...this.transfers.all]), frozen, admitted, ownedDirs: this.ownedDirs });
    // While a directory cannot be believed, only what loses nothing is done (allowedUnder).
    const actions = applyHolds(wanted.actions, holds);
    // Problems found against a listing that cannot be believed would be guesses: reported once it can.
    const problems = holds.datadir ? [] : wanted.problems;
    this.reportAll("problem", [
      ...problems.map((p) => ({ key: p.key, signature: p.message, log: () => this.logger.warn({ dataset: p.dataset, key: p.key }, p.message) })),
      ...pinProblems.map((message) => ({ key: message, signature: message, log: () => this.logger.warn(message) })),
    ]);
    return { catalog, stacks, space, actions, wantedCount: wanted.actions.length, problems: [...problems.map((p) => p.message), ...pinProblems] };
  }

  /** 7. Act, for at most `interval` (the rest is for the next ticks); failures put the dataset in back-off instead of blacklisting it forever. */
  private async actTick(seen: TickInput, plan: TickPlan): Promise<{ unmounted: number }> {
    const { config, snapshot, now } = seen;
    const { actions } = plan;
    const attaching = actions.flatMap((a) => (a.kind === "mount" ? [a.source] : []));
    // Which file each mount attaches, as this tick's scans saw it: the new loop device's backing identity.
    const identities = new Map([...snapshot.images, ...snapshot.cacheFiles].flatMap((e) => (e.dev === undefined ? [] : [[e.path, { dev: e.dev, ino: e.ino }] as const])));
    await this.attempt("attach journal", () => this.journal.begin(attaching));
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
    if (attaching.length > 0) await this.attempt("attach journal", () => this.journal.end());
    // Files deleted from cachedir this tick: a scan of it started before (one slower than its tick) is out of date.
    if (outcome.done.size > 0) this.observer.cachedir.invalidate();
    this.updateBackoff(outcome.done, new Set(outcome.failures.map((f) => f.action)), now);
    for (const a of outcome.done) {
      if (a.kind === "mkdir") this.ownedDirs.add(a.path);
      if (a.kind === "rmdir") this.ownedDirs.delete(a.path);
    }
    // Slow mounts still to do (deferred past this tick's deadline, or failed): the progress of a first start.
    return { unmounted: actions.filter((a) => a.kind === "mount" && a.tier === "slow" && !outcome.done.has(a)).length };
  }

  /** 8. Peer fill kept up; then tell: the log, the status file, metrics, systemd. The plan is kept for quiet ticks when nothing is left to do. */
  private async tellTick(seen: TickInput, plan: TickPlan, acted: { unmounted: number }, started: number): Promise<StatusReport> {
    const { snapshot, config, now, pins, holds } = seen;
    const { catalog, space, actions } = plan;
    // The verified copies this node can serve.
    const holdings = [...catalog.datasets.values()].filter((d) => d.cache === "valid").map((d) => ({ file: d.imageFile, size: d.size, mtimeMs: d.mtimeMs, path: d.cachePath }));
    await this.attempt("peer fill", () => this.peers.tick(this.config, holdings));
    // Stability (an image mounted only once unchanged for a tick) is judged between believed scans only.
    if (seen.view.dataFresh) this.previous = snapshot;
    this.ticks++;
    const usedBytes = occupiedBytes(snapshot, this.transfers.all);
    const ms = Math.round(this.clock.monotonic() - started);
    const report = this.buildReport({ snapshot, catalog, pins, stacks: plan.stacks, capacity: space.capacity, ghosts: space.ghosts, usedBytes, ms, problems: plan.problems });
    report.storage = { datadir: this.storage.datadir, cachedir: this.storage.cachedir };
    if (config.peerListen) report.peers = this.peers.view();
    if (acted.unmounted > 0) report.mounting = { mounted: catalog.datasets.size - acted.unmounted, total: catalog.datasets.size };
    const counts = countStates(report);
    this.logger.debug({ datasets: report.datasets.length, ...counts, budgetBytes: space.bytes, usedBytes, ghostBytes: space.ghosts, actions: actions.length, ms }, "tick");
    // Nothing to do, nothing going on: the next ticks may be quiet ones, until a time-bound event.
    const settled = actions.length === 0 && plan.wantedCount === 0 && catalog.pending.size === 0 && this.transfers.all.size === 0 && !holds.datadir && !holds.cachedir;
    this.lastQuiet = settled ? { key: seen.key(), catalog, report, holdings, until: this.nextTimedEvent(now, [...catalog.datasets.keys()]), bodyKey: `quiet-${this.ticks}` } : undefined;
    await this.publish(report, counts, this.lastQuiet?.bodyKey);
    return report;
  }

  /**
   * What the plan is made of, as one string: the configuration, datadir's and
   * cachedir's listings (by generation: a new listing is a change) and the
   * cache file system's size and free space, the mounts under mountdir and
   * their loop devices, the pins, and no copy. Time and the read statistics
   * are checked apart (tick): with nothing read within the window, every rate
   * is 0 whatever the time.
   */
  private quietKey(view: StorageView, mounts: readonly MountEntry[], loops: ReadonlyMap<string, LoopDevice>, pins: ReadonlyMap<string, number | undefined>, copies: number, now: number): string {
    if (copies > 0 || this.transfers.all.size > 0 || view.changed.length > 0 || view.memoryChanged || !view.dataFresh || !view.cacheFresh) return `busy-${now}`;
    const fs = view.cache?.fs;
    const parts = [
      `c${this.configGeneration}`,
      `d${view.data?.generation ?? -1}`,
      `k${view.cache?.generation ?? -1}:${fs?.totalBytes ?? 0}:${fs?.freeBytes ?? 0}`,
      `p${[...pins].map(([name, until]) => `${name}=${until ?? ""}`).join(",")}`,
    ];
    for (const m of mounts) parts.push(`${m.mountId}:${m.majorMinor}:${m.mountPoint}`);
    for (const l of loops.values()) parts.push(`${l.majorMinor}:${l.name}:${l.backingFile}:${l.deleted ? 1 : 0}`);
    return parts.join("\n");
  }

  /** The first time after `now` at which the plan changes by itself: a back-off that ends, a dataset idle for max_idle. */
  private nextTimedEvent(now: number, names: readonly string[]): number {
    let next = Infinity;
    for (const b of this.backoff.values()) if (b.until > now) next = Math.min(next, b.until);
    if (this.config.maxIdle > 0) {
      for (const name of names) {
        const at = (this.stats.get(name)?.lastReadAt ?? now) + this.config.maxIdle * 1000;
        if (at > now) next = Math.min(next, at);
      }
    }
    return next;
  }

  /**
   * How long a tick waits for a scan: a scan that takes longer is taken by a
   * later tick, so that the loop keeps its pace (status, metrics, watchdog)
   * even while the file server does not answer.
   */
  private scanWaitMs(): number {
    return Math.min(this.config.interval, this.config.scanTimeout) * 1000;
  }

  /**
   * Image files the daemon serves and so expects a scan of datadir to list:
   * those mounted as slow layers, those with a copy in cachedir, and the
   * datasets of the last believed scan.
   */
  private knownImages(mounts: readonly MountEntry[], loops: ReadonlyMap<string, LoopDevice>): Set<string> {
    const known = new Set(this.lastDatasetFiles);
    for (const m of mounts) {
      const loop = loops.get(m.majorMinor);
      if (loop && tierOf(loop.backingFile, this.config) === "slow") known.add(path.basename(loop.backingFile));
    }
    for (const f of this.storage.lastCache?.listing.entries ?? []) if (f.type === "file" && !f.file.startsWith(".")) known.add(f.file);
    return known;
  }

  /** Log each change of a directory's condition once; remember a new file system of datadir; take its real path. */
  private async noteStorage(view: StorageView): Promise<void> {
    for (const { before, after } of view.changed) this.logCondition(before, after);
    const real = view.data?.realPath;
    if (view.dataFresh && real !== undefined && real !== this.config.datadir) {
      this.logger.info({ datadir: this.config.datadir, realPath: real }, "datadir resolved");
      this.config = { ...this.config, datadir: real };
      this.configGeneration++;
    }
    if (view.newDatadirDev !== undefined && this.storage.datadirDevices.size > 1) {
      this.logger.info({ dir: "datadir", path: this.config.datadir, dev: view.newDatadirDev }, "datadir is on another file system; its images are there");
    }
    const bootId = this.bootId;
    if (view.memoryChanged && bootId !== undefined) {
      await this.attempt("datadir memory", async () => {
        await mkdir(this.config.stateDir, { recursive: true, mode: 0o755 });
        await writeDatadirMemory(this.config.stateDir, bootId, this.storage.memory);
      });
    }
    // Whatever failed while the server was away failed because of it: retried at once.
    if (view.changed.some(({ after }) => after.dir === "datadir" && after.available)) this.backoff.clear();
  }

  private logCondition(before: DirCondition, c: DirCondition): void {
    const fields = { dir: c.dir, path: c.path, reason: c.reason };
    if (c.available) {
      // The first scan after start: nothing was wrong.
      if (before.reason === "Starting") return;
      this.logger.info({ ...fields, outageMs: c.since - before.since, was: before.reason }, `${c.dir} available again`);
      return;
    }
    const doing = c.dir === "datadir" ? "serving what is mounted and cached, changing nothing until it is back" : "changing nothing in the cache until it is back";
    this.logger.warn({ ...fields, cause: c.message }, `${c.dir} unavailable: ${c.message}; ${doing}`);
  }

  private buildReport(input: {
    snapshot: Snapshot;
    catalog: Catalog;
    pins: ReadonlyMap<string, number | undefined>;
    stacks: ReadonlyMap<string, Layer[]>;
    capacity: number;
    ghosts: number;
    usedBytes: number;
    ms: number;
    problems: string[];
  }): StatusReport {
    const { snapshot, catalog, pins } = input;
    const now = snapshot.now;
    const written = new Map(snapshot.cacheFiles.map((f) => [f.path, f.size]));
    const datasets = [...catalog.datasets.values()].map((d): DatasetStatus => {
      const stats = this.stats.get(d.name);
      const r = this.stats.rate(d.name);
      const transfer = this.transfers.all.get(d.name);
      const top = input.stacks.get(d.mountPoint)?.at(-1);
      const backoff = this.backoff.get(d.name);
      const status: DatasetStatus = {
        name: d.name,
        imageFile: d.imageFile,
        sizeBytes: d.size,
        state: top?.tier === "cache" && !top.deleted ? "cached" : transfer?.state === "running" ? "copying" : transfer ? "queued" : "slow",
        pinned: pins.has(d.name),
        slowBytesPerSecond: r.slow,
        cacheBytesPerSecond: r.cache,
        slowBytesRead: stats?.slow.total ?? 0,
        cacheBytesRead: stats?.cache.total ?? 0,
      };
      const until = pins.get(d.name);
      if (until !== undefined) status.pinExpiresAt = until;
      if (stats && stats.slow.total + stats.cache.total > 0) status.lastReadAt = stats.lastReadAt;
      if (transfer?.state === "running" && transfer.startedAt !== undefined) {
        const doneBytes = written.get(transfer.tmpPath) ?? 0;
        status.copy = { doneBytes, totalBytes: transfer.size, startedAt: transfer.startedAt, bytesPerSecond: doneBytes / Math.max(0.001, (now - transfer.startedAt) / 1000) };
        const from = this.peers.sourceOf(d.imageFile);
        if (from !== undefined) status.copy.from = from;
      }
      if (backoff && backoff.until > now) status.note = `retrying after ${backoff.failures} failure(s) at ${new Date(backoff.until).toISOString()}`;
      return status;
    });
    return {
      version: STATUS_VERSION,
      pid: process.pid,
      writtenAt: now,
      intervalSeconds: this.config.interval,
      periodSeconds: this.config.period,
      datasets,
      refused: catalog.refusals.map((r) => ({ file: r.file, reason: r.reason })),
      cache: {
        dir: this.config.cachedir,
        usedBytes: input.usedBytes,
        capacityBytes: input.capacity,
        ghostBytes: input.ghosts,
        fsTotalBytes: snapshot.cacheFs.totalBytes,
        fsFreeBytes: snapshot.cacheFs.freeBytes,
      },
      cacheBytesServed: this.stats.cacheBytesServed,
      copies: { ...this.transfers.counters },
      tick: { count: this.ticks, ms: input.ms },
      problems: input.problems,
    };
  }

  /** Status file, metrics and systemd; a failure of one is logged once and never stops the loop. */
  private async publish(report: StatusReport, { cached, copying }: { cached: number; copying: number }, bodyKey?: string): Promise<void> {
    const config = this.config;
    // Each tick's report sets a few series per dataset: not done when nobody reads them.
    if (config.metricsFile || config.metricsListen) this.metrics.update(report);
    const pct = report.cache.capacityBytes > 0 ? Math.round((100 * report.cache.usedBytes) / report.cache.capacityBytes) : 0;
    const trouble = [this.storage.datadir, this.storage.cachedir]
      .filter((c) => !c.available && c.reason !== "Starting")
      .map((c) => `${c.dir} unavailable (${c.message}), holding: `)
      .join("");
    const mounting = report.mounting ? `mounting ${report.mounting.mounted} of ${report.mounting.total}, ` : "";
    const summary = `${trouble}${mounting}${report.datasets.length} datasets, ${cached} cached, ${copying} copying, ${pct}% of ${formatBytes(report.cache.capacityBytes)}`;
    await Promise.all([
      this.attempt("status file", () => writeStatusFile(config.runtimeDir, report, this.statusBodyFor(report, bodyKey))),
      this.attempt("metrics file", async () => {
        if (config.metricsFile) await this.metrics.writeFile(config.metricsFile);
      }),
      this.attempt("metrics listener", () => this.ensureMetricsServer()),
      this.attempt("systemd notify", () => this.notifier.sendChanged({ READY: "1", STATUS: summary, WATCHDOG: "1" })),
    ]);
  }

  /**
   * The status file's stable part, serialized once for a run of quiet ticks
   * (10,000 datasets make megabytes of JSON: once, not every tick).
   */
  private statusBodyFor(report: StatusReport, bodyKey: string | undefined): string | undefined {
    if (bodyKey === undefined) return undefined;
    if (this.statusBody?.key !== bodyKey) this.statusBody = { key: bodyKey, json: statusBody(report) };
    return this.statusBody.json;
  }

  private async ensureMetricsServer(): Promise<void> {
    const want = this.config.metricsListen;
    if (this.metricsServer?.listen === want) return;
    if (this.metricsServer) {
      await this.metricsServer.close();
      this.metricsServer = undefined;
    }
    if (want === undefined) return;
    const server = await this.metrics.listen(want, this.logger);
    this.metricsServer = { ...server, listen: want };
    this.logger.info({ listen: want, port: server.port }, "serving metrics");
  }

  private async attempt(what: string, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
      this.reportAll(`publish:${what}`, []);
    } catch (err) {
      const message = errorMessage(err);
      this.reportAll(`publish:${what}`, [{ key: what, signature: message, log: () => this.logger.error({ err: message }, `${what} failed`) }]);
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
    this.configGeneration++;
    // A reload is also how an administrator confirms a disappearance held back (plan/availability.ts).
    if (this.storage.confirm()) this.logger.warn({ dir: "datadir", path: this.config.datadir }, "datadir: the images that vanished are taken as removed at the next scan, as confirmed by the reload");
    this.stats.setPeriod(config.period * 1000);
    this.transfers.reconfigure({ maxCopies: config.maxCopies, copyBwlimit: config.copyBwlimit, commandTimeoutS: config.commandTimeout });
    this.peers.reconfigure(this.config);
    this.wake();
  }

  private async readPins(now: number): Promise<Map<string, number | undefined>> {
    let stored: Pin[] = [];
    try {
      stored = await readPins(this.config.stateDir);
      this.reportAll("pins-file", []);
    } catch (err) {
      // A damaged pins file must not stop the cache: keep serving with the config's pins.
      const message = `cannot read pins: ${errorMessage(err)}`;
      this.reportAll("pins-file", [{ key: "read", signature: message, log: () => this.logger.error(message) }]);
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
      const delay = Math.max(0, this.config.interval * 1000 - (this.clock.monotonic() - started));
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay);
        this.wakeUp = () => {
          clearTimeout(timer);
          resolve();
        };
      });
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
      // systemd shows "deactivating" while the copies are cancelled.
      await this.attempt("systemd notify", () => this.notifier.send({ STOPPING: "1", STATUS: "stopping: cancelling copies, leaving mounts in place" }));
      await this.transfers.cancelAll("daemon stopping");
      await this.peers.stop();
      const server = this.metricsServer;
      this.metricsServer = undefined;
      await server?.close();
    })();
    return this.stopped;
  }

  logCacheBytes(): void {
    this.logger.info({ bytes: this.stats.cacheBytesServed }, "bytes served from cache");
  }

  private async noteAttached(target: string, source: string, identities: ReadonlyMap<string, BackingId>): Promise<void> {
    const loop = await readLoopAt(target, this.roots);
    if (!loop) return;
    this.stats.noteAttached(loop.device.name, loop.device.backingFile, loop.readBytes);
    this.observer.attached(loop.device, identities.get(source));
  }

  private onCopySettled(name: string, outcome: CopyOutcome, t: Transfer): void {
    void this.peers.settled(t.imageFile, t.dest, outcome.ok);
    // A scan of cachedir under way may predate the copy's rename (or its temporary file's removal).
    this.observer.cachedir.invalidate();
    if (outcome.ok) this.backoff.delete(name);
    else if (!outcome.cancelled) this.fail(name, this.clock.now());
    this.wake();
  }

  private fail(name: string, now: number): void {
    const failures = (this.backoff.get(name)?.failures ?? 0) + 1;
    const delay = Math.min(this.config.interval * 1000 * 2 ** failures, MAX_BACKOFF_MS);
    this.backoff.set(name, { failures, until: now + delay });
    this.logger.warn({ dataset: name, failures, retryInMs: delay }, "dataset in back-off");
  }

  private updateBackoff(actions: Iterable<Action>, failed: ReadonlySet<Action>, now: number): void {
    const failedNames = new Set([...failed].map(actionDataset).filter((n): n is string => n !== undefined));
    for (const name of failedNames) this.fail(name, now);
    for (const a of actions) {
      const name = actionDataset(a);
      if (name !== undefined && !failedNames.has(name) && a.kind !== "start-copy") this.backoff.delete(name);
    }
  }

  private reportRefusals(catalog: Catalog): void {
    this.reportAll(
      "refused",
      catalog.refusals.map((r) => ({
        key: r.file,
        signature: `${r.signature}:${r.reason}`,
        log: () => this.logger.error({ file: r.file, reason: r.reason }, "image refused"),
      })),
    );
  }

  /** Log each condition once, and again only when it changes; forget those that are gone. */
  private reportAll(scope: string, items: { key: string; signature: string; log: () => void }[]): void {
    const live = new Set<string>();
    for (const item of items) {
      const key = `${scope}:${item.key}`;
      live.add(key);
      if (this.reported.get(key) === item.signature) continue;
      this.reported.set(key, item.signature);
      item.log();
    }
    for (const key of this.reported.keys()) if (key.startsWith(`${scope}:`) && !live.has(key)) this.reported.delete(key);
  }
}

/**
 * One tick's thinking, between observing and acting: believe each scan or
 * hold, catalogue, measure, decide, diff, report. No I/O, no clock, no log:
 * everything it knows comes in its arguments, so the same inputs give the
 * same actions and report (the unit tests drive it with made-up
 * observations). A quiet tick is this function's last output kept while
 * its inputs are unchanged.
 *
 * The memory is returned; three parts of it are updated in place: the
 * belief about the directories (Storage), the read statistics (Stats) and
 * the back-off. Copying the statistics' windows every tick would cost
 * O(datasets x window) at 10,000 datasets for nothing.
 */
import path from "node:path";
import type { Config } from "../config.js";
import type { Observation, Snapshot } from "../observe/snapshot.js";
import type { LoopDevice } from "../observe/loops.js";
import type { MountEntry } from "../observe/mountinfo.js";
import { buildReport, type CopyCounters } from "../report/build.js";
import type { StatusReport } from "../report/status.js";
import { applyHolds, type Holds } from "./availability.js";
import type { Backoff } from "./backoff.js";
import { catalogue, type Catalog, type Refusal } from "./catalog.js";
import { decide, STAGED_LEAD_MS } from "./decide.js";
import { diff, type Action, type CopyView, type Problem } from "./diff.js";
import { layerStacks, mountedImages, provisionalImages, relocateDetached, tierOf, type Layer } from "./layers.js";
import { budget, occupiedBytes, writableBytes } from "./policy.js";
import type { Stats } from "./stats.js";
import type { Storage, StorageView } from "./storage.js";
import type { ProbeRound, ProbeTarget } from "../observe/probe.js";
import { assessCacheDevice, type CacheDeviceCondition } from "./cache-device.js";
import type { KernelIoError } from "../observe/kernel-log.js";
import type { StagedEntry } from "../slurm/queue.js";
import { assessSlowLayers, layerId, stalledRead, suspect, suspectAll, suspectSince, type DeadLayer, type SlowLayers } from "./slow-layers.js";

/** What observing gave this tick, and the state of the copy pool. */
export interface ReconcileInput {
  observation: Observation;
  /** Pins not expired: name -> until (ms), undefined for a permanent one. */
  pins: ReadonlyMap<string, number | undefined>;
  /** The pool's copies before cachedir was scanned: one that finished in between is in neither the scan nor the pool, and would be started again. */
  copiesAtScan: ReadonlyMap<string, CopyView>;
  /** The pool's copies now. */
  copies: ReadonlyMap<string, CopyView>;
  counters: CopyCounters;
  pid: number;
  /** The cache probes' last round finished since the previous tick (observe/probe.ts), if any. */
  probeRound?: ProbeRound;
  /** The kernel's read errors logged since the previous tick (observe/kernel-log.ts). */
  kernelErrors?: readonly KernelIoError[];
  /** Datasets of jobs about to start here, earliest first (slurm/stager.ts): cached in the room left. */
  staged?: readonly StagedEntry[];
}

/** A verified cached copy this node can serve to its peers (fleet/server.ts Holding). */
export interface CachedCopy {
  file: string;
  size: number;
  mtimeMs: number;
  path: string;
}

/** The last plan that had nothing to do, kept while its inputs are unchanged. */
export interface QuietPlan {
  key: string;
  catalog: Catalog;
  report: StatusReport;
  holdings: CachedCopy[];
  /** When the plan changes by itself (a back-off ends, a dataset turns idle). */
  until: number;
  /** Names the status file's body, serialized once for the run of quiet ticks. */
  bodyKey: string;
  probeTargets: ProbeTarget[];
}

export interface Memory {
  /** Belief about datadir and cachedir (updated in place). */
  readonly storage: Storage;
  /** Read statistics over the window (updated in place). */
  readonly stats: Stats;
  /** Datasets left alone after failures (read here; the act step adds failures). */
  readonly backoff: Backoff;
  /** The last believed snapshot: an image is a dataset once unchanged between two. */
  previous?: Snapshot;
  /** Image files of the last catalog's datasets: what a scan of datadir is expected to list. */
  datasetFiles: ReadonlySet<string>;
  quiet?: QuietPlan;
  ticks: number;
  quietTicks: number;
  /** Bumped when the configuration changes (a reload, datadir resolved): part of the quiet key. */
  configGeneration: number;
  /** Mount points this process made, so that one left empty can be removed (DiffInput.ownedDirs). */
  ownedDirs: ReadonlySet<string>;
  /** Datasets whose cached copy `scratch_manager evict` asked to drop: kept out of the cache until dropped. */
  evicting: ReadonlySet<string>;
  /** `scratch_manager release`: drop the cache (all: and every mount of ours), then stop. */
  releasing?: { all: boolean };
  /** Whether the cache device can be read (plan/cache-device.ts). */
  cacheDevice: CacheDeviceCondition;
  /** Slow layers found dead, and the file systems whose layers are suspect (plan/slow-layers.ts). */
  slowLayers: SlowLayers;
  /** The probes' reads of images in datadir do not finish (plan/slow-layers.ts, stalledRead): datadir is not answering. */
  datadirStall?: string;
}

export interface Reconciled {
  actions: Action[];
  report: StatusReport;
  memory: Memory;
  /** What the tick believed (the act step takes the files' identities from it). */
  snapshot: Snapshot;
  /** The directories' belief: conditions that changed, a new file system of datadir, its real path. */
  storage: StorageView;
  holdings: CachedCopy[];
  /** Reused the last plan: nothing read, nothing changed. */
  quiet: boolean;
  /** For log-once; absent on a quiet tick (unchanged). */
  notices?: { refusals: Refusal[]; problems: Problem[]; pinProblems: string[] };
  /** The figures of the tick's debug line. */
  space?: { budgetBytes: number; ghostBytes: number; usedBytes: number };
  /** A release asked for is done: nothing of the cache (all: nothing of ours) is left; the daemon stops. */
  released?: boolean;
  /** The cache device's condition changed this tick (to be said once). */
  cacheDeviceChanged?: { before: CacheDeviceCondition; after: CacheDeviceCondition };
  /** What the probes read next (observe/probe.ts): each cached copy, through its loop device when mounted, and each slow layer. */
  probeTargets: ProbeTarget[];
  /** Slow layers found dead this tick (to be said once each). */
  deadLayers: DeadLayer[];
}

/** A tick's view after believing, before planning. */
interface Believed {
  view: StorageView;
  snapshot: Snapshot;
  holds: Holds;
  stacks: () => Map<string, Layer[]>;
  key: () => string;
}

export function reconcile(input: ReconcileInput, given: Memory, config: Config, now: number): Reconciled {
  const kernel = kernelEvidence(input, config);
  const cacheDevice = assessCacheDevice(given.cacheDevice, input.probeRound, input.observation.cacheReadOnly, now, kernel.cache);
  const cacheDeviceChanged = cacheDevice.reason !== given.cacheDevice.reason ? { before: given.cacheDevice, after: cacheDevice } : undefined;
  const live = new Set(input.observation.mounts.map((m) => layerId(m.majorMinor, m.mountId)));
  const assessed = assessSlowLayers(given.slowLayers, input.probeRound, live, now);
  const { found: deadLayers } = assessed;
  // A slow loop device the kernel saw fail: its file system's layers are read first.
  const probed = kernel.slowFileSystems.length > 0 ? suspect(assessed.layers, kernel.slowFileSystems, now) : assessed.layers;
  const datadirStall = stalledRead(given.datadirStall, input.probeRound);
  const memory = { ...given, cacheDevice, slowLayers: probed, datadirStall };
  const seen = believe(datadirStall === undefined ? input : withStall(input, datadirStall), memory, config, now);
  // datadir back, or on another file system: every slow layer's handle is suspect.
  if (seen.view.changed.some(({ before, after }) => after.dir === "datadir" && after.available && before.reason !== "Starting") || seen.view.datadirMoved === true) memory.slowLayers = suspectAll(probed, now);
  const last = memory.quiet !== undefined && memory.quiet.key === seen.key() ? memory.quiet : undefined;
  const catalog = last ? last.catalog : catalogue(seen.snapshot, memory.previous, config, mountedImages(seen.stacks()));
  const datasetFiles = seen.view.dataFresh ? new Set([...catalog.datasets.values()].map((d) => d.imageFile)) : memory.datasetFiles;
  memory.stats.update(seen.snapshot, config, catalog.nameOfFile, [...catalog.datasets.keys(), ...catalog.pending]);
  // Stability (an image mounted only once unchanged for a tick) is judged between believed scans only.
  const previous = seen.view.dataFresh ? seen.snapshot : memory.previous;
  const ticks = memory.ticks + 1;
  const base = { ...memory, datasetFiles, previous, ticks };
  if (last && now < last.until && now - memory.stats.lastAnyReadAt > config.period * 1000) {
    const report: StatusReport = { ...last.report, writtenAt: now, tick: { count: ticks, ms: 0 }, cacheBytesServed: memory.stats.cacheBytesServed, storage: storageOf(memory.storage) };
    return { actions: [], report, memory: { ...base, quietTicks: memory.quietTicks + 1 }, snapshot: seen.snapshot, storage: seen.view, holdings: last.holdings, quiet: true, cacheDeviceChanged, probeTargets: last.probeTargets, deadLayers };
  }
  return { ...plan(input, seen, catalog, base, config, now), cacheDeviceChanged, deadLayers };
}

/**
 * Each valid cached copy: its loop device when it is mounted on top, else
 * the file; and each slow layer of ours not known dead (the image it was
 * attached from, and its loop device).
 */
function probeTargets(catalog: Catalog, stacks: ReadonlyMap<string, Layer[]>, snapshot: Snapshot, slowLayers: SlowLayers): ProbeTarget[] {
  const out: ProbeTarget[] = [];
  for (const d of catalog.datasets.values()) {
    const stack = stacks.get(d.mountPoint);
    const bottom = stack?.[0];
    const slowLoop = bottom?.tier === "slow" && !bottom.dead && !bottom.deleted && bottom.backingFile === d.imagePath ? snapshot.loops.get(bottom.entry.majorMinor) : undefined;
    if (bottom && slowLoop) {
      const backingDev = slowLoop.backing?.dev;
      out.push({ tier: "slow", dataset: d.name, path: `/dev/${slowLoop.name}`, sizeBytes: slowLoop.sizeBytes || d.size, image: d.imagePath, device: bottom.entry.majorMinor, mountId: bottom.mountId, backingDev, suspectSince: suspectSince(slowLayers, backingDev) });
    }
    if (d.cache !== "valid") continue;
    const top = stack?.at(-1);
    const loop = top?.tier === "cache" ? snapshot.loops.get(top.entry.majorMinor) : undefined;
    out.push({ tier: "cache", dataset: d.name, path: loop ? `/dev/${loop.name}` : d.cachePath, sizeBytes: d.size });
  }
  return out;
}

/**
 * The kernel's read errors that are evidence: one naming a cached copy's
 * loop device, or the device under cachedir (or its disk), is the cache
 * device failing; one naming a slow layer's loop device makes that layer's
 * file system suspect (its layers are probed first). Pure.
 */
function kernelEvidence(input: ReconcileInput, config: Config): { cache?: KernelIoError; slowFileSystems: string[] } {
  const errors = input.kernelErrors ?? [];
  if (errors.length === 0) return { slowFileSystems: [] };
  const cacheDevices = new Set<string>();
  const slowDevices = new Map<string, string | undefined>();
  for (const loop of input.observation.loops.values()) {
    const tier = tierOf(loop.backingFile, config);
    if (tier === "cache") cacheDevices.add(loop.name);
    else slowDevices.set(loop.name, loop.backing?.dev);
  }
  const source = input.observation.cacheMount?.source;
  if (source?.startsWith("/dev/")) {
    const name = path.basename(source);
    cacheDevices.add(name);
    // Its disk: nvme0n1p2 -> nvme0n1, sdb1 -> sdb, mmcblk0p1 -> mmcblk0.
    cacheDevices.add(name.replace(/(\d)p\d+$/, "$1").replace(/^((?:sd|vd|xvd|hd)[a-z]+)\d+$/, "$1"));
  }
  const cache = errors.find((e) => cacheDevices.has(e.device));
  const slowFileSystems = [...new Set(errors.flatMap((e) => (slowDevices.has(e.device) ? [slowDevices.get(e.device) ?? "*"] : [])))];
  return { cache, slowFileSystems };
}

/**
 * A fresh scan of datadir whose stat came from the client's attribute cache
 * is no evidence that the server answers, while the probes' O_DIRECT reads
 * of its images do not finish: taken as a scan that timed out.
 */
function withStall(input: ReconcileInput, message: string): ReconcileInput {
  const view = input.observation.datadir;
  if (view.kind !== "fresh") return input;
  return { ...input, observation: { ...input.observation, datadir: { kind: "failed", code: "ETIMEDOUT", message, timedOut: true, at: view.at } } };
}

/** Believe this tick's scans or hold ("unavailable" is never "empty"); the snapshot the plan is made from. */
function believe(input: ReconcileInput, memory: Memory, config: Config, now: number): Believed {
  const { observation, pins } = input;
  const loops = relocateDetached(observation.loops, memory.storage.datadirDevices, config);
  const view = memory.storage.update(observation, knownImages(memory, observation.mounts, loops, config), config);
  // Whatever failed while the server was away failed because of it: retried at once.
  if (view.changed.some(({ after }) => after.dir === "datadir" && after.available)) memory.backoff.clear();
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
  // The mount stacks, and the quiet key (a megabyte string at 10,000 datasets): built only when needed.
  let stacks: Map<string, Layer[]> | undefined;
  let key: string | undefined;
  return {
    view,
    snapshot,
    holds: { datadir: !view.dataFresh, cachedir: !view.cacheFresh },
    stacks: () => (stacks ??= layerStacks(snapshot, config, new Set(memory.slowLayers.dead.keys()))),
    key: () => (key ??= memory.evicting.size > 0 || memory.releasing || !memory.cacheDevice.up ? `busy-${now}` : quietKey(`${memory.configGeneration}:${memory.cacheDevice.reason}:${(input.staged ?? []).map((e) => `${e.dataset}@${e.jobId}${e.startAt - now <= STAGED_LEAD_MS ? "!" : ""}`).join(",")}`, view, observation.mounts, loops, pins, input.copiesAtScan.size + input.copies.size, now, memory.slowLayers)),
  };
}

/**
 * Decide (plan/decide.ts): the pins that fit, then the policy, within the
 * budget (capacity, less copies held open, within keep_free); copies
 * admitted into free space. Then the difference between what is and what
 * should be, less what a directory that cannot be believed forbids; and
 * the report.
 */
function plan(input: ReconcileInput, seen: Believed, catalog: Catalog, memory: Memory, config: Config, now: number): Omit<Reconciled, "deadLayers"> {
  const { snapshot, holds } = seen;
  const { pins, copiesAtScan, copies } = input;
  const { stats, backoff } = memory;
  const stacks = seen.stacks();
  const space = budget(snapshot, config);
  const occupied = occupiedBytes(snapshot, copies);
  const { cached, admitted, pinProblems } = decide({
    datasets: [...catalog.datasets.values()],
    pending: catalog.pending,
    pinned: new Set(pins.keys()),
    policy: config.policy,
    rate: (name) => stats.rate(name),
    fastRate: (name) => stats.fastRate(name),
    idle: (name) => {
      const lastRead = stats.get(name)?.lastReadAt;
      return config.maxIdle > 0 && lastRead !== undefined && now - lastRead > config.maxIdle * 1000;
    },
    copying: new Set([...copiesAtScan.keys(), ...copies.keys()]),
    staged: input.staged?.map((e) => ({ name: e.dataset, due: e.startAt - now <= STAGED_LEAD_MS })),
    space: { capacity: space.capacity, budget: space.bytes, ghosts: space.ghosts, occupied, writable: writableBytes(snapshot, copies) - space.keepFree },
  });
  const frozen = backoff.frozen(now);
  // An eviction or a release asked for by the administrator, or a failing cache device, overrides the policy and the pins.
  const fallback = !memory.cacheDevice.up;
  for (const name of memory.releasing || fallback ? [...cached] : memory.evicting) {
    cached.delete(name);
    admitted.delete(name);
  }
  const target = memory.releasing?.all ? { ...catalog, datasets: new Map(), pending: new Set<string>(), pendingFiles: new Set<string>() } : catalog;
  const wanted = diff({ config, catalog: target, stacks, cacheFiles: snapshot.cacheFiles, cached, transfers: new Map([...copiesAtScan, ...copies]), frozen: memory.releasing ? new Set() : frozen, admitted, ownedDirs: memory.ownedDirs });
  // While a directory cannot be believed, only what loses nothing is done (allowedUnder). While the cache
  // device fails, its overmounts come off (even if cachedir cannot be listed), and nothing is written to it or deleted.
  const held = fallback ? fallBack(wanted.actions, holds) : applyHolds(wanted.actions, holds);
  const actions = memory.cacheDevice.reason === "ReadOnly" ? readOnly(held, copies) : held;
  // Problems found against a listing that cannot be believed would be guesses: reported once it can.
  const problems = holds.datadir ? [] : wanted.problems;
  const report = buildReport({
    config,
    snapshot,
    catalog,
    pins,
    stacks,
    copies,
    counters: input.counters,
    stats,
    backoff,
    space: { capacity: space.capacity, ghosts: space.ghosts, usedBytes: occupied },
    problems: [...problems.map((p) => p.message), ...pinProblems],
    storage: storageOf(memory.storage),
    ticks: memory.ticks,
    pid: input.pid,
    cacheDevice: memory.cacheDevice,
    deadLayers: memory.slowLayers.dead,
    deadLayersFound: memory.slowLayers.foundTotal,
    staged: input.staged,
  });
  // The verified copies this node can serve.
  const holdings = [...catalog.datasets.values()].filter((d) => d.cache === "valid").map((d) => ({ file: d.imageFile, size: d.size, mtimeMs: d.mtimeMs, path: d.cachePath }));
  // Nothing to do, nothing going on: the next ticks may be quiet ones, until a time-bound event.
  const settled = actions.length === 0 && wanted.actions.length === 0 && catalog.pending.size === 0 && copies.size === 0 && !holds.datadir && !holds.cachedir;
  const targets = probeTargets(catalog, stacks, snapshot, memory.slowLayers);
  const quiet = settled ? { key: seen.key(), catalog, report, holdings, until: nextTimedEvent(memory, config, now, [...catalog.datasets.keys()]), bodyKey: `quiet-${memory.ticks}`, probeTargets: targets } : undefined;
  // An eviction is done once the dataset has no cached copy left, mounted or on disk.
  const evicting = new Set([...memory.evicting].filter((name) => {
    const d = catalog.datasets.get(name);
    return d !== undefined && (d.cache !== "none" || stacks.get(d.mountPoint)?.at(-1)?.tier === "cache");
  }));
  const released = memory.releasing !== undefined && actions.length === 0 && wanted.actions.length === 0 && copies.size === 0 && !holds.datadir && !holds.cachedir;
  // A dead layer unmounted by this tick is forgotten now: its mount ID and loop device may be the fresh layer's.
  const unmounted = new Set(actions.flatMap((a) => (a.kind === "unmount" && a.tier === "slow" ? [layerId(a.device, a.mountId)] : [])));
  const slowLayers = [...unmounted].some((id) => memory.slowLayers.dead.has(id)) ? { ...memory.slowLayers, dead: new Map([...memory.slowLayers.dead].filter(([id]) => !unmounted.has(id))) } : memory.slowLayers;
  return {
    released,
    actions,
    report,
    memory: { ...memory, quiet, evicting, slowLayers },
    snapshot,
    storage: seen.view,
    holdings,
    quiet: false,
    notices: { refusals: catalog.refusals, problems, pinProblems },
    probeTargets: targets,
    space: { budgetBytes: space.bytes, ghostBytes: space.ghosts, usedBytes: occupied },
  };
}

/** The steps left while cachedir's file system is read-only: its copies stay served (and may be mounted); nothing copied or deleted, copies running cancelled. */
function readOnly(actions: readonly Action[], copies: ReadonlyMap<string, CopyView>): Action[] {
  const kept = actions.filter((a) => a.kind !== "start-copy" && a.kind !== "delete-file");
  const cancelled = new Set(kept.flatMap((a) => (a.kind === "cancel-copy" ? [a.dataset] : [])));
  const cancel = [...copies.values()].filter((c) => !cancelled.has(c.name)).map((c): Action => ({ kind: "cancel-copy", key: c.name, dataset: c.name, reason: "the cache file system is read-only" }));
  return [...kept, ...cancel];
}

/** The steps left while the cache device fails: its overmounts taken off, copies cancelled; nothing written to it, mounted from it or deleted. */
function fallBack(actions: readonly Action[], holds: Holds): Action[] {
  const allowed = (a: Action) => (a.kind === "unmount" && a.tier === "cache") || a.kind === "cancel-copy";
  const rest = applyHolds(actions.filter((a) => !allowed(a)), holds).filter((a) => !(a.kind === "delete-file" || a.kind === "start-copy" || (a.kind === "mount" && a.tier === "cache")));
  return [...actions.filter(allowed), ...rest];
}

function storageOf(storage: Storage): NonNullable<StatusReport["storage"]> {
  return { datadir: storage.datadir, cachedir: storage.cachedir };
}

/**
 * Image files the daemon serves and so expects a scan of datadir to list:
 * those mounted as slow layers, those with a copy in cachedir, and the
 * datasets of the last believed scan.
 */
function knownImages(memory: Memory, mounts: readonly MountEntry[], loops: ReadonlyMap<string, LoopDevice>, config: Config): Set<string> {
  const known = new Set(memory.datasetFiles);
  for (const m of mounts) {
    const loop = loops.get(m.majorMinor);
    if (loop && tierOf(loop.backingFile, config) === "slow") known.add(path.basename(loop.backingFile));
  }
  for (const f of memory.storage.lastCache?.listing.entries ?? []) if (f.type === "file" && !f.file.startsWith(".")) known.add(f.file);
  return known;
}

/**
 * What the plan is made of, as one string: the configuration, datadir's and
 * cachedir's listings (by generation: a new listing is a change) and the
 * cache file system's size and free space, the mounts under mountdir and
 * their loop devices, the pins, and no copy. Time and the read statistics
 * are checked apart (reconcile): with nothing read within the window, every
 * rate is 0 whatever the time.
 */
function quietKey(configGeneration: string, view: StorageView, mounts: readonly MountEntry[], loops: ReadonlyMap<string, LoopDevice>, pins: ReadonlyMap<string, number | undefined>, copies: number, now: number, slowLayers: SlowLayers): string {
  if (copies > 0 || view.changed.length > 0 || view.memoryChanged || !view.dataFresh || !view.cacheFresh) return `busy-${now}`;
  const fs = view.cache?.fs;
  const parts = [
    `c${configGeneration}`,
    `d${view.data?.generation ?? -1}`,
    `k${view.cache?.generation ?? -1}:${fs?.totalBytes ?? 0}:${fs?.freeBytes ?? 0}`,
    `p${[...pins].map(([name, until]) => `${name}=${until ?? ""}`).join(",")}`,
    // Dead layers change the plan; suspect file systems change the probes' targets.
    `x${[...slowLayers.dead.keys()].join(",")}`,
    `s${[...slowLayers.suspect].map(([dev, { since }]) => `${dev}@${since}`).join(",")}`,
  ];
  for (const m of mounts) parts.push(`${m.mountId}:${m.majorMinor}:${m.mountPoint}`);
  for (const l of loops.values()) parts.push(`${l.majorMinor}:${l.name}:${l.backingFile}:${l.deleted ? 1 : 0}`);
  return parts.join("\n");
}

/** The first time after `now` at which the plan changes by itself: a back-off that ends, a dataset idle for max_idle. */
function nextTimedEvent(memory: Memory, config: Config, now: number, names: readonly string[]): number {
  let next = memory.backoff.nextEnd(now);
  if (config.maxIdle > 0) {
    for (const name of names) {
      const at = (memory.stats.get(name)?.lastReadAt ?? now) + config.maxIdle * 1000;
      if (at > now) next = Math.min(next, at);
    }
  }
  return next;
}

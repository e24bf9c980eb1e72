import path from "node:path";
import type { Runner } from "../lib/exec.js";
import type { Config } from "../config.js";
import type { ScanView } from "./dir-watch.js";
import type { ReadCounters } from "./loops.js";
import { DirWatch } from "./dir-watch.js";
import { PROBE_BYTES, probeHeader, type FileEntry, type Probe } from "./images.js";
import { readBackingIds, readLoopCounter, readLoopDevice, readLoopDevices, type BackingId, type LoopDevice } from "./loops.js";
import { readMountinfo, type MountEntry } from "./mountinfo.js";
import { listDirectory, listLocalDirectory, readHeaders, realDirectory, scanFailure, ScanError, statFile, statfsLocal, statLocal, type DirStat, type Listing } from "./scan.js";
import { systemClock, type Clock } from "../lib/clock.js";

export interface FsUsage {
  totalBytes: number;
  freeBytes: number;
}

/** The file system holding cachedir mounted read-only (mountinfo): an administrator's remount, or the kernel's after an error (ext4 errors=remount-ro). */
export interface ReadOnlyCache {
  mountPoint: string;
  source: string;
}

/** Everything one tick knows about the machine. Plain data: plan and diff read nothing else. */
export interface Snapshot {
  /** Milliseconds, from the injected clock. */
  now: number;
  /** The entries of datadir the daemon believes (see plan/availability.ts). */
  images: FileEntry[];
  /** Probe result for each regular file of datadir, by file name. */
  probes: Map<string, Probe>;
  cacheFiles: FileEntry[];
  /** Mounts whose mount point is directly under mountdir. */
  mounts: MountEntry[];
  /** Bound loop devices by "major:minor". */
  loops: Map<string, LoopDevice>;
  /** Read counters of the loop devices sampled this tick (not all: Observer.readCounters). */
  readBytes: ReadCounters;
  cacheFs: FsUsage;
}

/** A scan of datadir: its entries, and the superblock probe of each image. */
export interface DataScan {
  listing: Listing;
  probes: Map<string, Probe>;
  /** datadir with its symbolic links resolved, as the kernel names loop devices' backing files. */
  realPath: string;
  /** The entries were listed (and lstat'ed) this time; false: the directory had not changed, the last listing stands. */
  listed: boolean;
  /** Which listing this is (Observer.dataListings when it was made): the same number, the same entries. */
  generation: number;
}

/** A scan of cachedir: its entries and its file system's space. */
export interface CacheScan {
  listing: Listing;
  fs: FsUsage;
  /** Which listing this is (Observer.cacheListings when it was made). */
  generation: number;
}

/** What one tick observed: the machine's own state, and this tick's view of each directory. */
export interface Observation {
  now: number;
  datadir: ScanView<DataScan>;
  cachedir: ScanView<CacheScan>;
  mounts: MountEntry[];
  loops: Map<string, LoopDevice>;
  readBytes: ReadCounters;
  /**
   * The device of the file system mounted at datadir (its real path, once
   * known), from /proc/self/mountinfo; null when nothing is mounted there
   * (plan/availability.ts, AssessInput.mountPoint).
   */
  datadirMountDev?: string | null;
  /** The file system holding cachedir, when it is mounted read-only (plan/cache-device.ts). */
  cacheReadOnly?: ReadOnlyCache;
  /** The mount holding cachedir (its device's health is read from it: observe/device-health.ts). */
  cacheMount?: MountEntry;
}

export interface ObserveRoots {
  proc: string;
  sys: string;
}

/**
 * Reads the machine. The two directories are read only through their
 * DirWatch, by child processes (observe/scan.ts): the daemon never makes a
 * system call on the file server itself. Keeps between ticks: probe results
 * keyed by (inode, size, mtime), so that an unchanged image on NFS is not
 * read again, and loop devices' backing identities.
 */
export class Observer {
  private probeCache = new Map<string, { key: string; probe: Probe }>();
  private backingIds = new Map<string, { key: string; id: BackingId | undefined; retryAt?: number }>();
  /** Told how many devices a `losetup --list` is run for (the daemon logs it at debug level). */
  onBackingQuery?: (devices: number) => void;
  /** Loop devices held by mounts under mountdir, by "major:minor", with the mount IDs that held them (see readLoops). */
  private heldLoops = new Map<string, { loop: LoopDevice; holders: string }>();
  /** Bound loop devices no mount under mountdir holds (see readLoops). */
  private unmountedLoops = new Set<string>();
  private lastLoopScan = -Infinity;
  /** Each loop device's last sampled read counter (see readCounters). */
  private counters = new Map<string, Counter>();
  /** Bytes the probes are reading or have read from each loop device (by name), not yet taken off its counter (see probeRead). */
  private probeReads = new Map<string, number>();
  /** Listings of datadir and of cachedir made so far: a new one may list something new (the daemon's quiet ticks). */
  dataListings = 0;
  cacheListings = 0;
  readonly datadir: DirWatch<DataScan>;
  readonly cachedir: DirWatch<CacheScan>;
  /** datadir's real path, once resolved (it may not exist at start); forgotten when a scan fails. */
  private datadirReal?: string;
  /** The last listing of cachedir and when it was made. */
  private lastCacheListing?: { listing: Listing; at: number; generation: number };
  /** The last full listing of datadir and when it was made (see unchanged). */
  private lastListing?: { scan: DataScan; at: number };

  constructor(
    config: Pick<Config, "datadir" | "cachedir">,
    private readonly run: Runner,
    private readonly roots: ObserveRoots = { proc: "/proc", sys: "/sys" },
    private readonly clock: Clock = systemClock,
  ) {
    this.datadir = new DirWatch(config.datadir, clock);
    this.cachedir = new DirWatch(config.cachedir, clock);
  }

  /**
   * @param waitMs how long this tick waits for a scan of each directory; one
   *   that takes longer is taken by a later tick (see DirWatch.poll).
   */
  async observe(config: Config, waitMs: number, signal?: AbortSignal, copying = false): Promise<Observation> {
    const timeoutMs = config.scanTimeout * 1000;
    const machine = (async () => {
      const allMounts = await readMountinfo(this.roots.proc);
      const mounts = allMounts.filter((m) => path.dirname(m.mountPoint) === config.mountdir);
      const loopList = await this.readLoops(mounts, config);
      const readBytes = this.readCounters(loopList, config.interval);
      return { allMounts, mounts, loopList, readBytes };
    })();
    const [datadir, cachedir, { allMounts, mounts, loopList, readBytes }] = await Promise.all([
      this.datadir.poll((s) => this.scanData(config, timeoutMs, s), waitMs, signal),
      this.cachedir.poll(() => this.scanCache(config, copying), waitMs, signal),
      machine,
    ]);
    const real = this.datadirReal;
    // The last entry at datadir is the mount on top (mountinfo lists mounts in creation order).
    const datadirMountDev = real === undefined ? undefined : (allMounts.filter((m) => m.mountPoint === real).at(-1)?.majorMinor ?? null);
    const loops = new Map(loopList.map((l) => [l.majorMinor, l]));
    await this.identifyBacking(mounts, loops, timeoutMs);
    const cacheMount = mountHolding(allMounts, config.cachedir);
    const cacheReadOnly = cacheMount && cacheMount.options.split(",").includes("ro") ? { mountPoint: cacheMount.mountPoint, source: cacheMount.source } : undefined;
    return { now: this.clock.now(), datadir, cachedir, mounts, loops, readBytes, datadirMountDev, cacheReadOnly, cacheMount };
  }

  /**
   * The loop devices this tick needs, without reading all of sysfs: with ten
   * thousand images, three files per device per tick were most of a quiet
   * tick's CPU. A device held by a mount under mountdir cannot be attached
   * to another file while the same mounts (by ID) hold it: what sysfs said of
   * it stands. A new mount's device is read through /sys/dev/block; a device
   * of ours its mounts let go of is watched while it stays bound (a dropped
   * copy a reader keeps open: its space still counts, see ghostBytes). Every
   * LOOP_FULL_SCAN_MS, and at the first tick, every device is read, for
   * whatever else may be bound (a daemon restarted with copies held open).
   */
  private async readLoops(mounts: readonly MountEntry[], config: Config): Promise<LoopDevice[]> {
    const holders = new Map<string, string>();
    for (const m of mounts) holders.set(m.majorMinor, `${holders.get(m.majorMinor) ?? ""}${m.mountId},`);
    const held = new Map<string, { loop: LoopDevice; holders: string }>();
    const unmounted = new Set<string>();
    // Only ours are watched unmounted: other programs' loop devices (snaps, other namespaces' mounts) are none of its business.
    const ours = (file: string) => [config.datadir, config.cachedir, this.datadirReal].includes(path.dirname(file));
    const keep = (loop: LoopDevice) => {
      const by = holders.get(loop.majorMinor);
      // The same object from tick to tick while the same mounts hold it (no copy: ten thousand a tick were most of the garbage).
      if (by !== undefined) held.set(loop.majorMinor, { loop, holders: by });
      else if (ours(loop.backingFile)) unmounted.add(loop.majorMinor);
    };
    const cached = (majorMinor: string): LoopDevice | undefined => {
      const c = this.heldLoops.get(majorMinor);
      return c && c.holders === holders.get(majorMinor) ? c.loop : undefined;
    };
    let loops: LoopDevice[];
    const now = this.clock.now();
    if (now - this.lastLoopScan >= LOOP_FULL_SCAN_MS) {
      this.lastLoopScan = now;
      const byName = new Map([...this.heldLoops.values()].map((c) => [c.loop.name, c.loop.majorMinor]));
      loops = await readLoopDevices(this.roots.sys, (name) => {
        const mm = byName.get(name);
        return mm === undefined ? undefined : cached(mm);
      });
    } else {
      loops = [];
      // Held by a mount now, watched unmounted, or held at the last tick by mounts gone since (still bound? a dropped copy a reader holds open).
      const misses: string[] = [];
      const want = (mm: string) => {
        const loop = cached(mm);
        if (loop) loops.push(loop);
        else misses.push(mm);
      };
      for (const mm of holders.keys()) want(mm);
      for (const mm of this.unmountedLoops) if (!holders.has(mm)) want(mm);
      for (const mm of this.heldLoops.keys()) if (!holders.has(mm) && !this.unmountedLoops.has(mm)) want(mm);
      for (const mm of misses) {
        const loop = await readLoopDevice(mm, this.roots.sys);
        if (loop) loops.push(loop);
      }
    }
    for (const loop of loops) keep(loop);
    this.heldLoops = held;
    this.unmountedLoops = unmounted;
    return loops;
  }

  /**
   * The read counters of the loop devices, not all of them each tick: the
   * kernel sums a device's counters over every CPU for each read of its
   * stats, so reading all of them grows with the loop devices, read or not
   * (BENCHMARKS.md, issue 11). A device read lately (its counter moved in the
   * last minute) is sampled every tick, a new one at once, the idle ones in
   * turn, each at least every IDLE_SAMPLE_MS (all of them every tick while
   * they are few): a dataset that becomes hot is seen within that, and
   * what it read meanwhile is counted whole (the counters are cumulative),
   * only at a later tick. Each from /sys/block/<dev>/stat, in memory.
   */
  private readCounters(loops: readonly LoopDevice[], intervalS: number): ReadCounters {
    const now = this.clock.now();
    const out: ReadCounters = new Map();
    const next = new Map<string, Counter>();
    const idle: LoopDevice[] = [];
    const sample = (loop: LoopDevice) => {
      const last = this.counters.get(loop.name);
      const raw = readLoopCounter(this.roots.sys, loop.name);
      if (raw === undefined) return;
      // A counter that went back is a device attached again (a first sample is the baseline): nothing to take off.
      const same = last !== undefined && raw >= last.raw;
      const pending = this.probeReads.get(loop.name) ?? 0;
      // The probes' reads are taken off as the kernel counts them: never more than the counter moved.
      const taken = same ? Math.min(pending, raw - last.raw) : 0;
      if (same && pending - taken > 0) this.probeReads.set(loop.name, pending - taken);
      else this.probeReads.delete(loop.name);
      const excluded = (same ? last.excluded : 0) + taken;
      const bytes = raw - excluded;
      out.set(loop.name, bytes);
      next.set(loop.name, { bytes, raw, excluded, sampledAt: now, movedAt: last && last.bytes === bytes ? last.movedAt : last ? now : -Infinity });
    };
    for (const loop of loops) {
      const last = this.counters.get(loop.name);
      if (!last || now - last.movedAt < ACTIVE_MS) sample(loop);
      else idle.push(loop);
    }
    // The idle ones, least recently sampled first: all of them over IDLE_SAMPLE_MS, and never fewer than IDLE_SAMPLES a tick.
    const budget = Math.max(IDLE_SAMPLES, Math.ceil((idle.length * intervalS * 1000) / IDLE_SAMPLE_MS));
    idle.sort((a, b) => (this.counters.get(a.name)?.sampledAt ?? 0) - (this.counters.get(b.name)?.sampledAt ?? 0));
    idle.forEach((loop, i) => {
      if (i < budget) sample(loop);
      else next.set(loop.name, this.counters.get(loop.name) as Counter);
    });
    this.counters = next;
    return out;
  }

  /**
   * A probe's read of a loop device (observe/probe.ts), told before it
   * starts (failed: after it failed, most likely not counted): taken off the
   * device's read counter as the kernel counts it, so that a probe is not a
   * job's read. Counted, it would make an unread dataset look read (and
   * cached if it fits) and keep every tick from being quiet.
   */
  probeRead(device: string, bytes: number, failed: boolean): void {
    const pending = (this.probeReads.get(device) ?? 0) + (failed ? -bytes : bytes);
    if (pending > 0) this.probeReads.set(device, pending);
    else this.probeReads.delete(device);
  }

  /**
   * The backing file's device and inode of every loop device mounted under
   * mountdir (LoopDevice.backing): its path alone does not say which file it
   * is. On NFS or FUSE an image replaced by another client keeps its path in
   * the kernel's eyes, without " (deleted)", and a file system detached with
   * `umount -l` names its files from its own root. A device keeps its file
   * while attached: read once (one losetup for all new ones), remembered
   * until it is detached or attached again (attached()).
   */
  private async identifyBacking(mounts: readonly MountEntry[], loops: Map<string, LoopDevice>, timeoutMs: number): Promise<void> {
    const wanted: LoopDevice[] = [];
    const live = new Set<string>();
    const now = this.clock.now();
    for (const m of mounts) {
      const loop = loops.get(m.majorMinor);
      if (!loop) continue;
      live.add(loop.name);
      const known = this.backingIds.get(loop.name);
      if (known?.key === loop.backingFile && (known.id !== undefined || known.retryAt === undefined || known.retryAt > now)) loop.backing = known.id;
      else wanted.push(loop);
    }
    for (const name of this.backingIds.keys()) if (!live.has(name)) this.backingIds.delete(name);
    if (wanted.length === 0) return;
    this.onBackingQuery?.(wanted.length);
    let ids: Map<string, BackingId>;
    try {
      ids = await readBackingIds(this.run, wanted.map((l) => l.name), timeoutMs);
    } catch {
      // Unknown for now: judged by their paths, and asked again only after a while: losetup
      // --list stats every device's backing file, on the file server.
      for (const loop of wanted) this.backingIds.set(loop.name, { key: loop.backingFile, id: undefined, retryAt: now + LOOP_FULL_SCAN_MS });
      return;
    }
    for (const loop of wanted) {
      loop.backing = ids.get(loop.name);
      this.backingIds.set(loop.name, { key: loop.backingFile, id: loop.backing });
    }
  }

  /**
   * A device the daemon has just attached to a file, whose device and inode
   * the tick's scan gave (undefined: unknown, asked of losetup next tick).
   * Told here so that a first start with thousands of mounts does not run
   * `losetup --list` over every device at every tick.
   */
  attached(device: LoopDevice, id: BackingId | undefined): void {
    if (id) this.backingIds.set(device.name, { key: device.backingFile, id });
    else this.backingIds.delete(device.name);
    // Mount IDs and loop devices are both reused (lowest free): the same pair may now stand for another file.
    this.heldLoops.delete(device.majorMinor);
  }

  /**
   * One scan of datadir: resolve it (once: it may not exist at start), stat
   * it, and list it and probe its new images only if it changed (see
   * unchanged). A failure forgets the resolution and the listing, so that the
   * next scan starts afresh.
   */
  private async scanData(config: Config, timeoutMs: number, signal?: AbortSignal): Promise<DataScan> {
    try {
      const realPath = this.datadirReal ?? (await realDirectory(this.run, config.datadir, timeoutMs, signal));
      this.datadirReal = realPath;
      const dir = await statFile(this.run, realPath, timeoutMs, signal);
      const last = this.lastListing;
      if (last && last.scan.realPath === realPath && unchanged(last.scan.listing, dir, last.at, this.clock.now(), config)) {
        return { ...last.scan, listing: { ...last.scan.listing, dir }, listed: false };
      }
      const scan = { ...(await this.listData(realPath, timeoutMs, signal)), generation: ++this.dataListings };
      this.lastListing = { scan, at: this.clock.now() };
      return scan;
    } catch (err) {
      this.datadirReal = undefined;
      this.lastListing = undefined;
      throw err;
    }
  }

  private async listData(realPath: string, timeoutMs: number, signal?: AbortSignal): Promise<Omit<DataScan, "generation">> {
    const listing = await listDirectory(this.run, realPath, timeoutMs, signal);
    const probes = new Map<string, Probe>();
    const seen = new Map<string, { key: string; probe: Probe }>();
    const toRead: FileEntry[] = [];
    for (const e of listing.entries) {
      if (e.type !== "file" || e.file.startsWith(".")) continue;
      const key = `${e.ino}:${e.size}:${e.mtimeMs}`;
      const cached = this.probeCache.get(e.file);
      if (cached?.key === key) {
        probes.set(e.file, cached.probe);
        seen.set(e.file, cached);
      } else toRead.push(e);
    }
    const headers = await readHeaders(this.run, toRead, PROBE_BYTES, timeoutMs, signal);
    for (const e of toRead) {
      const header = headers.get(e.path);
      const probe: Probe = header instanceof Buffer ? probeHeader(header, e.size) : { ok: false, reason: `cannot read (${header instanceof ScanError ? header.code : "no data"})` };
      probes.set(e.file, probe);
      seen.set(e.file, { key: `${e.ino}:${e.size}:${e.mtimeMs}`, probe });
    }
    this.probeCache = seen;
    return { listing, probes, realPath, listed: true };
  }

  /**
   * One scan of cachedir. It is the local disk, which the daemon itself
   * writes: read in the daemon's own threads (its DirWatch still keeps them to
   * one at a time), the directory and its file system stat'ed each tick, its
   * entries listed only when it changed, while copies write into it (their
   * temporary files grow: progress, space), and every rescan_interval.
   * Two child processes a tick were a fifth of a quiet tick's CPU.
   */
  private async scanCache(config: Config, copying: boolean): Promise<CacheScan> {
    try {
      const [dir, fs] = await Promise.all([statLocal(config.cachedir), statfsLocal(config.cachedir)]);
      const last = this.lastCacheListing;
      if (!copying && last && unchanged(last.listing, dir, last.at, this.clock.now(), { ...config, interval: 0 })) {
        return { listing: { ...last.listing, dir }, fs, generation: last.generation };
      }
      const listing = await listLocalDirectory(config.cachedir);
      const generation = ++this.cacheListings;
      this.lastCacheListing = { listing, at: this.clock.now(), generation };
      return { listing, fs, generation };
    } catch (err) {
      this.lastCacheListing = undefined;
      throw err;
    }
  }
}

/**
 * Slack on timestamps: a file server may keep mtimes to the second (or
 * coarser), so a change made in the same second as a listing would not move
 * the directory's mtime. A directory or image modified this recently before
 * the last listing is listed again.
 */
const MTIME_SLACK_MS = 2000;

/**
 * Whether the last listing of datadir still stands, so that a tick costs the
 * file server one stat of the directory whatever the number of images: the
 * directory is the same (device, inode) with the same mtime and ctime (an
 * image added, removed or renamed changes both), it was not being changed
 * around the last listing, no image was still being written then (it must
 * be seen stable before it is mounted, and writing into a file does not
 * touch the directory), and the last listing is younger than
 * rescan_interval, the safety net for what a directory's times do not show
 * (an image rewritten in place). Pure.
 */
export function unchanged(last: Listing, dir: DirStat, listedAt: number, now: number, config: Pick<Config, "rescanInterval" | "interval">): boolean {
  if (now - listedAt >= config.rescanInterval * 1000) return false;
  const same = last.dir.dev === dir.dev && last.dir.ino === dir.ino && last.dir.mtimeMs === dir.mtimeMs && last.dir.ctimeMs === dir.ctimeMs;
  if (!same || last.dir.mtimeMs >= listedAt - MTIME_SLACK_MS) return false;
  // An image written shortly before the listing may still be growing: listed each tick until it has settled.
  const settledBefore = listedAt - MTIME_SLACK_MS - config.interval * 1000;
  return last.entries.every((e) => e.file.startsWith(".") || e.mtimeMs < settledBefore);
}

/**
 * The mount a path is on: the top mount of the longest mount point that is
 * the path or one of its parents (mountinfo lists mounts in creation order,
 * so the last at a mount point is on top). Pure.
 */
export function mountHolding(mounts: readonly MountEntry[], dir: string): MountEntry | undefined {
  let best: MountEntry | undefined;
  for (const m of mounts) {
    const under = m.mountPoint === "/" || dir === m.mountPoint || dir.startsWith(`${m.mountPoint}/`);
    if (under && (!best || m.mountPoint.length >= best.mountPoint.length)) best = m;
  }
  return best;
}

/** A loop device's read counter as sampled: as the daemon counts it (`bytes`, less the probes' reads), as the kernel does (`raw`). */
interface Counter {
  bytes: number;
  raw: number;
  /** The probes' reads taken off so far. */
  excluded: number;
  sampledAt: number;
  movedAt: number;
}

/** A device whose counter moved within this long is sampled every tick (Observer.readCounters). */
const ACTIVE_MS = 60_000;
/** An idle device's counter is sampled at least this often... */
const IDLE_SAMPLE_MS = 30_000;
/** ...and this many of them each tick at least (a node with a few datasets samples them all). */
const IDLE_SAMPLES = 50;

/** How often every loop device is read from sysfs, not only those the tick needs (Observer.readLoops). */
const LOOP_FULL_SCAN_MS = 300_000;

/** Size and free space of the file system holding `dir`, through stat -f (a child, like every read of the directories). */
export async function fsUsage(run: Runner, dir: string, timeoutMs: number, signal?: AbortSignal): Promise<FsUsage> {
  let stdout: string;
  try {
    ({ stdout } = await run("stat", ["--file-system", "--printf", "%S %b %a", "--", dir], { timeoutMs, signal }));
  } catch (err) {
    throw scanFailure(err, `statfs of ${dir}`);
  }
  const [frsize, blocks, avail] = stdout.trim().split(/\s+/).map(Number) as [number, number, number];
  if (![frsize, blocks, avail].every(Number.isFinite)) throw new ScanError("EPROTO", `stat -f printed ${JSON.stringify(stdout)} for ${dir}`);
  return { totalBytes: frsize * blocks, freeBytes: frsize * avail };
}

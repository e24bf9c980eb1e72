import { statfs } from "node:fs/promises";
import pMap from "p-map";
import { READ_CONCURRENCY } from "./concurrency.js";
import type { Config } from "../config.js";
import { readLoopReadCounters, type ReadCounters } from "./diskstats.js";
import { listDirectory, probeImage, type FileEntry, type Probe } from "./images.js";
import { readLoopDevices, type LoopDevice } from "./loops.js";
import { readMountinfo, type MountEntry } from "./mountinfo.js";
import path from "node:path";

export interface FsUsage {
  totalBytes: number;
  freeBytes: number;
}

/** Everything one tick knows about the machine. Plain data: plan and diff read nothing else. */
export interface Snapshot {
  /** Milliseconds, from the injected clock. */
  now: number;
  images: FileEntry[];
  /** Probe result for each regular file of datadir, by file name. */
  probes: Map<string, Probe>;
  cacheFiles: FileEntry[];
  /** Mounts whose mount point is directly under mountdir. */
  mounts: MountEntry[];
  /** Bound loop devices by "major:minor". */
  loops: Map<string, LoopDevice>;
  readBytes: ReadCounters;
  cacheFs: FsUsage;
}

export interface ObserveRoots {
  proc: string;
  sys: string;
}

/**
 * Reads the machine. Keeps one thing between ticks: probe results keyed by
 * (inode, size, mtime), so that an unchanged image on NFS is not re-read
 * every tick.
 */
export class Observer {
  private probeCache = new Map<string, { key: string; probe: Probe }>();

  constructor(
    private readonly roots: ObserveRoots = { proc: "/proc", sys: "/sys" },
    private readonly clock: () => number = Date.now,
  ) {}

  async observe(config: Config): Promise<Snapshot> {
    const [images, cacheFiles, allMounts, loopList, readBytes, fs] = await Promise.all([
      listDirectory(config.datadir),
      listDirectory(config.cachedir),
      readMountinfo(this.roots.proc),
      readLoopDevices(this.roots.sys),
      readLoopReadCounters(this.roots.proc),
      statfs(config.cachedir),
    ]);
    const probes = new Map<string, Probe>();
    const seen = new Map<string, { key: string; probe: Probe }>();
    await pMap(
      images.filter((e) => e.type === "file"),
      async (e) => {
        const key = `${e.ino}:${e.size}:${e.mtimeMs}`;
        const cached = this.probeCache.get(e.file);
        const probe = cached?.key === key ? cached.probe : await probeImage(e.path, e.size);
        probes.set(e.file, probe);
        seen.set(e.file, { key, probe });
      },
      { concurrency: READ_CONCURRENCY },
    );
    this.probeCache = seen;
    return {
      now: this.clock(),
      images,
      probes,
      cacheFiles,
      mounts: allMounts.filter((m) => path.dirname(m.mountPoint) === config.mountdir),
      loops: new Map(loopList.map((l) => [l.majorMinor, l])),
      readBytes,
      cacheFs: { totalBytes: fs.blocks * fs.bsize, freeBytes: fs.bavail * fs.bsize },
    };
  }
}

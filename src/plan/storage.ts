import type { Config } from "../config.js";
import { assessDir, visibleNames, type DirCondition, type DirName } from "./availability.js";
import type { ScanView } from "../observe/dir-watch.js";
import type { DatadirMemory } from "../state/devices.js";
import type { Listing } from "../observe/scan.js";
import type { CacheScan, DataScan, Observation } from "../observe/snapshot.js";

/** One directory's memory: its condition, the last scan believed, the file system it was on. */
interface DirState<T> {
  condition: DirCondition;
  last?: T;
  acceptedDev?: string;
}

/** What the daemon may believe this tick. */
export interface StorageView {
  /** The last believed scan of datadir (this tick's if `dataFresh`), if there ever was one. */
  data?: DataScan;
  /** This tick's scan of datadir was believed: the daemon may act on datadir. */
  dataFresh: boolean;
  cache?: CacheScan;
  cacheFresh: boolean;
  /** Conditions that changed this tick (to be logged once), with what they were. */
  changed: { before: DirCondition; after: DirCondition }[];
  /** A file system datadir has moved to, to be remembered (state/devices.ts). */
  newDatadirDev?: string;
  /** datadir is on another file system than at the last believed scan (not the first): its slow layers' handles are suspect. */
  datadirMoved?: boolean;
  /** What state/devices.ts keeps changed this tick: to be written. */
  memoryChanged: boolean;
}

function initial(dir: DirName, path: string, now: number): DirCondition {
  return { dir, path, available: false, reason: "Starting", message: "no scan has finished yet", since: now };
}

function listingOf<T extends { listing: Listing }>(view: ScanView<T>): ScanView<Listing> {
  return view.kind === "fresh" ? { ...view, result: view.result.listing } : view;
}

/**
 * The daemon's belief about datadir and cachedir across ticks (the rules are
 * plan/availability.ts). It remembers the last scan of each that it believed,
 * which is what the daemon keeps acting on (holding back every destructive
 * step) while a directory cannot be believed.
 */
export class Storage {
  private readonly data: DirState<DataScan>;
  private readonly cache: DirState<CacheScan>;
  /** Every file system datadir has been on in this boot, "major:minor" (LoopDevice.backing). */
  readonly datadirDevices: Set<string>;
  private confirmed = false;
  /** datadir was a mount point when last believed (DatadirMemory.mountPoint). */
  private mountPoint: boolean;

  constructor(config: Pick<Config, "datadir" | "cachedir">, now: number, memory: DatadirMemory = { devices: [], mountPoint: false }) {
    this.datadirDevices = new Set(memory.devices);
    this.mountPoint = memory.mountPoint;
    this.data = { condition: initial("datadir", config.datadir, now), acceptedDev: memory.devices.at(-1) };
    this.cache = { condition: initial("cachedir", config.cachedir, now) };
  }

  /** What state/devices.ts keeps. */
  get memory(): DatadirMemory {
    return { devices: [...this.datadirDevices], mountPoint: this.mountPoint };
  }

  get datadir(): DirCondition {
    return this.data.condition;
  }

  get cachedir(): DirCondition {
    return this.cache.condition;
  }

  /** The last scan of cachedir that was believed, if any. */
  get lastCache(): CacheScan | undefined {
    return this.cache.last;
  }

  /**
   * The administrator confirms what datadir now lists (systemctl reload):
   * a disappearance held back, or a new file system, is believed at the
   * next scan. Only while one is held back; it applies to one scan.
   */
  confirm(): boolean {
    const held = ["MassDisappearance", "FilesystemChanged"].includes(this.data.condition.reason);
    if (held) this.confirmed = true;
    return held;
  }

  /**
   * @param known image files the daemon serves: mounted, cached, or datasets
   *   of its last catalog (see AssessInput.known).
   */
  update(observation: Observation, known: ReadonlySet<string>, config: Config): StorageView {
    const now = observation.now;
    const timeoutMs = config.scanTimeout * 1000;
    const changed: StorageView["changed"] = [];
    const note = (before: DirCondition, after: DirCondition) => {
      if (before.available !== after.available || before.reason !== after.reason) changed.push({ before, after });
    };

    const dataView = observation.datadir;
    // datadir is a mount point only if what was listed is the file system mounted there: the mount
    // table and the scan are read at different moments (a mount landing in between).
    const mountDev = observation.datadirMountDev;
    const mountedNow = mountDev === undefined || dataView.kind !== "fresh" ? undefined : mountDev === dataView.result.listing.dir.dev;
    const data = assessDir({
      previous: this.data.condition,
      view: listingOf(dataView),
      acceptedDev: this.data.acceptedDev,
      lastNames: this.data.last && visibleNames(this.data.last.listing),
      known,
      now,
      timeoutMs,
      vanishShare: config.vanishShare,
      confirmed: this.confirmed,
      mountPoint: mountedNow === undefined ? undefined : { was: this.mountPoint, now: mountedNow },
    });
    note(this.data.condition, data.condition);
    this.data.condition = data.condition;
    let newDatadirDev: string | undefined;
    let datadirMoved = false;
    let memoryChanged = false;
    if (dataView.kind === "fresh") this.confirmed = false;
    if (data.accept && dataView.kind === "fresh") {
      this.data.last = dataView.result;
      if (mountedNow !== undefined && mountedNow !== this.mountPoint) {
        this.mountPoint = mountedNow;
        memoryChanged = true;
      }
      if (data.newDev !== undefined) {
        if (this.data.acceptedDev !== undefined && this.data.acceptedDev !== data.newDev) datadirMoved = true;
        this.data.acceptedDev = data.newDev;
        if (!this.datadirDevices.has(data.newDev)) {
          newDatadirDev = data.newDev;
          memoryChanged = true;
        }
        this.datadirDevices.add(data.newDev);
      }
    }

    const cacheView = observation.cachedir;
    const cache = assessDir({
      previous: this.cache.condition,
      view: listingOf(cacheView),
      acceptedDev: this.cache.acceptedDev,
      known: new Set(this.cache.last ? visibleNames(this.cache.last.listing) : []),
      now,
      timeoutMs,
      confirmed: false,
    });
    note(this.cache.condition, cache.condition);
    this.cache.condition = cache.condition;
    if (cache.accept && cacheView.kind === "fresh") {
      this.cache.last = cacheView.result;
      if (cache.newDev !== undefined) this.cache.acceptedDev = cache.newDev;
    }

    return {
      data: this.data.last,
      dataFresh: data.accept,
      cache: this.cache.last,
      cacheFresh: cache.accept,
      changed,
      newDatadirDev,
      datadirMoved,
      memoryChanged,
    };
  }
}

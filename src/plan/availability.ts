/**
 * "Unavailable" is never "empty": the rules that decide whether a scan of
 * datadir (or cachedir) may be believed, and what the daemon holds back
 * while it may not. Pure: the caller passes the scan, what it knows, the
 * clock and the thresholds.
 */
import type { Listing } from "../observe/scan.js";
import type { Action } from "./diff.js";
import type { ScanView } from "../observe/dir-watch.js";

/**
 * Why a directory is (not) available, as Kubernetes status conditions name
 * their reasons: one CamelCase word that alerts and scripts can match.
 */
export type DirReason =
  /** The last scan was read and believed. */
  | "Available"
  /** No scan has finished yet (the daemon has just started). */
  | "Starting"
  /** A scan has not finished within scan_timeout: a hung server. */
  | "NotResponding"
  /** A scan failed: EIO, ESTALE, ENOTCONN, EACCES, ... */
  | "IOError"
  /** The directory does not exist (an automounted server that is down). */
  | "Missing"
  /** It is on another file system than at the last good scan, and the known images are not there (unmounted to the directory beneath). */
  | "FilesystemChanged"
  /** Most of the known images vanished in one scan while nothing else changed: held back until confirmed. */
  | "MassDisappearance";

export type DirName = "datadir" | "cachedir";

/** A lasting condition of one directory: logs, status, metrics and systemd all read it from here. */
export interface DirCondition {
  dir: DirName;
  path: string;
  available: boolean;
  reason: DirReason;
  message: string;
  /** When `available` last changed (ms since the epoch). */
  since: number;
  /** When a scan was last believed, if ever. */
  lastGoodScanAt?: number;
  /** Images of a held-back mass disappearance (datadir only). */
  vanished?: string[];
}


export interface AssessInput {
  previous: DirCondition;
  view: ScanView<Listing>;
  /** The file system the directory was on at its last good scan ("major:minor"), if any. */
  acceptedDev?: string;
  /** Entry names of the last good scan, if any. */
  lastNames?: ReadonlySet<string>;
  /**
   * Image files the daemon knows it serves: mounted, cached, or datasets of
   * the last good scan. The disappearance guard counts how many of these a
   * scan no longer lists. Empty for cachedir (no guard there).
   */
  known: ReadonlySet<string>;
  now: number;
  timeoutMs: number;
  /** More than this share (0..1) of the known images vanishing at once is held back; undefined: no guard. */
  vanishShare?: number;
  /** The administrator confirmed the current listing (SIGHUP): believe it even if the guard would not. */
  confirmed: boolean;
  /**
   * datadir was a mount point when last believed (remembered across
   * reboots), and is one now. A file server that is not mounted leaves the
   * empty directory beneath: at boot, before any device is known, this is
   * how that is told from a directory emptied on purpose.
   */
  mountPoint?: { was: boolean; now: boolean };
}

export interface Assessment {
  condition: DirCondition;
  /** The scan is believed: act on it. */
  accept: boolean;
  /** The directory moved to another file system and the scan is believed: remember its new device. */
  newDev?: string;
}

/** Hidden files are never datasets (editors' and copy tools' temporaries, our own records). */
export function visibleNames(listing: Listing): ReadonlySet<string> {
  // A listing taken again from the last one (the directory unchanged) keeps its entries: the same names, not rebuilt every tick.
  let names = namesOf.get(listing.entries);
  if (!names) {
    names = new Set(listing.entries.map((e) => e.file).filter((f) => !f.startsWith(".")));
    namesOf.set(listing.entries, names);
  }
  return names;
}

const namesOf = new WeakMap<readonly unknown[], Set<string>>();

/**
 * Whether a scan looks like the shared storage gone rather than images
 * deleted, in the spirit of Kubernetes' node lifecycle controller, which
 * stops evicting when a large share of a zone goes unready at once: the
 * known images that vanished are at least two and more than `share` of
 * them, and nothing new appeared (an administrator renaming every image is
 * a change, not an outage). One image removed is a deletion, and is
 * honoured.
 */
export function massDisappearance(input: { known: ReadonlySet<string>; names: ReadonlySet<string>; lastNames?: ReadonlySet<string>; share: number }): string[] | undefined {
  const vanished = [...input.known].filter((f) => !input.names.has(f)).sort();
  if (vanished.length === 0) return undefined;
  const appeared = input.lastNames ? [...input.names].some((f) => !input.lastNames?.has(f)) : false;
  if (appeared) return undefined;
  return vanished.length >= 2 && vanished.length > input.share * input.known.size ? vanished : undefined;
}

/** After a change of file system: the known images missing from it, if too many are (any, with the directory empty). */
function movedAway(known: ReadonlySet<string>, names: ReadonlySet<string>, share: number): string[] | undefined {
  const vanished = [...known].filter((f) => !names.has(f)).sort();
  if (vanished.length === 0) return undefined;
  return names.size === 0 || vanished.length > share * known.size ? vanished : undefined;
}

function listSome(names: readonly string[]): string {
  return names.length <= 3 ? names.join(", ") : `${names.slice(0, 3).join(", ")} and ${names.length - 3} more`;
}

function seconds(ms: number): number {
  return Math.round(ms / 1000);
}

/** The next condition of a directory, and whether this tick's scan is believed. */
export function assessDir(input: AssessInput): Assessment {
  const { previous, view, now } = input;
  const unavailable = (reason: DirReason, message: string, extra: Partial<DirCondition> = {}): Assessment => ({
    condition: { ...previous, available: false, reason, message, since: previous.available ? now : previous.since, vanished: undefined, ...extra },
    accept: false,
  });
  switch (view.kind) {
    case "waiting": {
      const waited = now - view.since;
      if (waited > input.timeoutMs) return unavailable("NotResponding", `not answering for ${seconds(waited)} s`);
      // A scan still within its deadline: nothing to believe this tick, nothing to report yet.
      return { condition: previous, accept: false };
    }
    case "failed":
      if (view.timedOut) return unavailable("NotResponding", `not answering (${view.message})`);
      if (view.code === "ENOENT") return unavailable("Missing", "does not exist");
      return unavailable("IOError", `${view.code}: ${view.message}`);
    case "fresh": {
      const listing = view.result;
      const names = visibleNames(listing);
      const moved = input.acceptedDev !== undefined && listing.dir.dev !== input.acceptedDev;
      if (input.mountPoint?.was === true && !input.mountPoint.now && !input.confirmed) {
        return unavailable("FilesystemChanged", "is no longer a mount point: the file system that was mounted there is not (confirm a move with systemctl reload scratch_manager)");
      }
      // On another file system, every known image must be there but a few (deleted meanwhile): an empty
      // directory, or one missing more than the share, is the directory beneath or another server's.
      const vanished = moved
        ? movedAway(input.known, names, input.vanishShare ?? 0.5)
        : input.vanishShare === undefined
          ? undefined
          : massDisappearance({ known: input.known, names, lastNames: input.lastNames, share: input.vanishShare });
      if (vanished && !input.confirmed) {
        const which = `${vanished.length} of ${input.known.size} known images (${listSome(vanished)})`;
        if (moved) {
          return unavailable("FilesystemChanged", `is no longer the file system it was (device ${input.acceptedDev} is now ${listing.dir.dev}) and ${which} are not there`, { vanished });
        }
        return unavailable("MassDisappearance", `${which} vanished in one scan; if they were removed on purpose, confirm with systemctl reload scratch_manager`, { vanished });
      }
      const back = !previous.available && previous.reason !== "Starting";
      const condition: DirCondition = {
        ...previous,
        available: true,
        reason: "Available",
        message: back ? `answering again after ${seconds(now - previous.since)} s` : "answering",
        since: previous.available ? previous.since : now,
        lastGoodScanAt: view.at,
        vanished: undefined,
      };
      return { condition, accept: true, newDev: moved || input.acceptedDev === undefined ? listing.dir.dev : undefined };
    }
  }
}

/** Holds on this tick's actions: what may not be done while a directory cannot be believed. */
export interface Holds {
  /** datadir is unavailable, or this tick has no fresh scan of it. */
  datadir: boolean;
  /** cachedir is unavailable, or this tick has no fresh scan of it. */
  cachedir: boolean;
}

/**
 * The actions allowed under the holds. Without a believed scan of datadir
 * nothing is unmounted, deleted, cancelled or copied (a copy would read the
 * dead server), and no image is mounted from it: the only step left is
 * mounting a finished copy over its slow mount, which moves readers off the
 * failing server. Without one of cachedir nothing of the cache is deleted,
 * started, mounted or unmounted.
 */
export function allowedUnder(holds: Holds, a: Action): boolean {
  if (holds.datadir && !(a.kind === "mount" && a.tier === "cache")) return false;
  if (holds.cachedir) {
    switch (a.kind) {
      case "delete-file":
      case "start-copy":
        return false;
      case "mount":
      case "unmount":
        return a.tier !== "cache";
      default:
        return true;
    }
  }
  return true;
}

/**
 * This tick's actions under the holds. The steps of one key (a mount point)
 * only make sense in order: once one is held back, the later ones of its key
 * are too (a cache mount planned on top of an unmount that is held would
 * stack two copies).
 */
export function applyHolds(actions: readonly Action[], holds: Holds): Action[] {
  const stopped = new Set<string>();
  const kept: Action[] = [];
  for (const a of actions) {
    if (stopped.has(a.key)) continue;
    if (allowedUnder(holds, a)) kept.push(a);
    else stopped.add(a.key);
  }
  return kept;
}

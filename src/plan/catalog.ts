import path from "node:path";
import type { Config } from "../config.js";
import type { FileEntry, ImageKind } from "../observe/images.js";
import type { Snapshot } from "../observe/snapshot.js";
import { datasetName } from "./naming.js";

export interface Dataset {
  name: string;
  imageFile: string;
  imagePath: string;
  kind: ImageKind;
  size: number;
  mtimeMs: number;
  mountPoint: string;
  /** Where its cached copy lives: cachedir/<image file name>, as in the original. */
  cachePath: string;
  /** Where a copy is written before it is verified and renamed to cachePath. */
  tmpPath: string;
  /** The cached copy, if any: valid when size and mtime (to the second) match the image. */
  cache: "none" | "valid" | "stale";
}

export interface Refusal {
  file: string;
  reason: string;
  /** Changes when the file changes: a refusal is logged once per signature and retried when it changes. */
  signature: string;
}

export interface Catalog {
  datasets: Map<string, Dataset>;
  /** Names whose image is still changing: left exactly as they are this tick. */
  pending: Set<string>;
  /** Image file names of those, whose cached copies are kept meanwhile. */
  pendingFiles: Set<string>;
  refusals: Refusal[];
  /** Image file name -> dataset name, for every image with a valid name (to attribute loop devices). */
  nameOfFile: Map<string, string>;
}

/**
 * A copy in progress is a hidden file of cachedir: hidden so that no tool
 * takes it for a finished copy; it belongs to no image, so the clean-up of
 * cachedir removes one left by a crash.
 */
export function tmpPathFor(cachedir: string, imageFile: string): string {
  return path.join(cachedir, `.scratch_manager.${imageFile}.partial`);
}

/** rsync -t and the original compare mtimes to the second; sub-second precision varies between file systems. */
export function sameVersion(a: { size: number; mtimeMs: number }, b: { size: number; mtimeMs: number }): boolean {
  return a.size === b.size && Math.floor(a.mtimeMs / 1000) === Math.floor(b.mtimeMs / 1000);
}

/**
 * An image is stable when it has not changed since the previous tick, or its
 * mtime is a full interval old: a file still being written is neither.
 */
function isStable(entry: FileEntry, previous: FileEntry | undefined, now: number, intervalMs: number): boolean {
  if (previous && previous.ino === entry.ino && previous.size === entry.size && previous.mtimeMs === entry.mtimeMs) return true;
  return !previous && entry.mtimeMs <= now - intervalMs;
}

function describeType(type: FileEntry["type"]): string {
  switch (type) {
    case "directory":
      return "is a directory; only image files are served";
    case "symlink":
      return "is a symbolic link; place the image file itself in datadir";
    case "other":
      return "is not a regular file (FIFO, socket or device)";
    case "file":
      return "";
  }
}

/**
 * Turn the files of datadir into datasets: probe, stability, mount names and
 * the conflict rule of SPEC.md (the image already mounted keeps a shared
 * name, else the lexicographically first; the other is refused).
 */
export function catalogue(snapshot: Snapshot, previous: Snapshot | undefined, config: Config, mountedImages: ReadonlySet<string>): Catalog {
  const refusals: Refusal[] = [];
  const pending = new Set<string>();
  const pendingFiles = new Set<string>();
  const nameOfFile = new Map<string, string>();
  const candidates = new Map<string, FileEntry[]>();
  const previousByFile = new Map(previous?.images.map((e) => [e.file, e]));
  const cacheByFile = new Map(snapshot.cacheFiles.map((e) => [e.file, e]));

  for (const entry of snapshot.images) {
    const signature = `${entry.type}:${entry.ino}:${entry.size}:${entry.mtimeMs}`;
    const refuse = (reason: string) => refusals.push({ file: entry.file, reason, signature });
    if (entry.file.startsWith(".")) continue; // hidden files: editors' and copy tools' temporaries
    const named = datasetName(entry.file, config.naming);
    if (!named.ok) {
      refuse(named.reason);
      continue;
    }
    nameOfFile.set(entry.file, named.name);
    if (entry.type !== "file") {
      refuse(describeType(entry.type));
      continue;
    }
    if (!isStable(entry, previousByFile.get(entry.file), snapshot.now, config.interval * 1000)) {
      pending.add(named.name);
      pendingFiles.add(entry.file);
      continue;
    }
    const probe = snapshot.probes.get(entry.file);
    if (!probe?.ok) {
      refuse(probe?.reason ?? "not probed");
      continue;
    }
    const list = candidates.get(named.name) ?? [];
    list.push(entry);
    candidates.set(named.name, list);
  }

  const datasets = new Map<string, Dataset>();
  for (const [name, entries] of candidates) {
    // Byte order of the names, not the listing's order nor the locale's.
    const winner = entries.find((e) => mountedImages.has(e.path)) ?? [...entries].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0))[0];
    if (!winner) continue;
    for (const loser of entries) {
      if (loser === winner) continue;
      refusals.push({
        file: loser.file,
        reason: `mount name ${JSON.stringify(name)} is already taken by ${JSON.stringify(winner.file)}; rename one of them or set naming = strip-extension`,
        signature: `conflict:${winner.file}:${loser.ino}:${loser.size}:${loser.mtimeMs}`,
      });
    }
    // A stable image holds the name even while another file of that name is still being written.
    pending.delete(name);
    const probe = snapshot.probes.get(winner.file);
    const cached = cacheByFile.get(winner.file);
    datasets.set(name, {
      name,
      imageFile: winner.file,
      imagePath: winner.path,
      kind: probe?.ok ? probe.kind : "squashfs",
      size: winner.size,
      mtimeMs: winner.mtimeMs,
      mountPoint: path.join(config.mountdir, name),
      cachePath: path.join(config.cachedir, winner.file),
      tmpPath: tmpPathFor(config.cachedir, winner.file),
      cache: !cached || cached.type !== "file" ? "none" : sameVersion(cached, winner) ? "valid" : "stale",
    });
  }
  return { datasets, pending, pendingFiles, refusals, nameOfFile };
}

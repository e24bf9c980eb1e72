import path from "node:path";
import type { Config } from "../config.js";
import type { FileEntry, Probe } from "../observe/images.js";
import type { LoopDevice } from "../observe/loops.js";
import { stacks, type MountEntry } from "../observe/mountinfo.js";
import type { Snapshot } from "../observe/snapshot.js";
import { layerId } from "./slow-layers.js";

/** One mount of a stack at mountdir/<name>, classified by who owns it. */
export interface Layer {
  mountId: number;
  /** slow: a loop device backed by an image in datadir; cache: by a file in cachedir; foreign: anything else. */
  tier: "slow" | "cache" | "foreign";
  backingFile?: string;
  deleted: boolean;
  /** A slow layer whose reads fail while its image in datadir reads (plan/slow-layers.ts): attached again. */
  dead?: boolean;
  entry: MountEntry;
}

/** The tier a loop device's backing file belongs to: an image in datadir, a copy in cachedir, or neither. */
export function tierOf(backingFile: string, config: Pick<Config, "datadir" | "cachedir">): "slow" | "cache" | undefined {
  const dir = path.dirname(backingFile);
  return dir === config.datadir ? "slow" : dir === config.cachedir ? "cache" : undefined;
}

/**
 * Loop devices whose backing file is on a file system datadir was on, but
 * whose path is not under datadir: datadir was unmounted (`umount -l`, or
 * the automounter) and mounted again, and the kernel now names the file from
 * the detached file system's root ("/alpha.sqfs"). By its device (one of
 * datadir's, state/devices.ts) it is one of our images: it is renamed here to
 * the image of datadir it stands for, so that every later step (layers,
 * statistics) sees the daemon's own slow mount. Pure.
 */
export function relocateDetached(loops: ReadonlyMap<string, LoopDevice>, datadirDevices: ReadonlySet<string>, config: Pick<Config, "datadir" | "cachedir">): Map<string, LoopDevice> {
  const out = new Map<string, LoopDevice>();
  for (const [key, loop] of loops) {
    const detached = loop.backing !== undefined && tierOf(loop.backingFile, config) === undefined && datadirDevices.has(loop.backing.dev);
    out.set(key, detached ? { ...loop, backingFile: path.join(config.datadir, path.basename(loop.backingFile)) } : loop);
  }
  return out;
}

/**
 * A slow layer is the image at its path only if it is the same file, as it
 * was: one whose inode differs from the file now at that path was replaced,
 * by another client of the file server (the kernel names it as before,
 * without " (deleted)") or while datadir was away; one whose size is no
 * longer the loop device's was rewritten in place (the device keeps the
 * size it was attached with: the image must be attached again).
 */
function replaced(loop: LoopDevice, image: FileEntry | undefined): boolean {
  if (image === undefined) return false;
  if (loop.backing !== undefined && image.ino !== loop.backing.ino) return true;
  // /sys/block/loopN/size counts whole 512-byte sectors of the file.
  return loop.sizeBytes > 0 && loop.sizeBytes !== Math.floor(image.size / 512) * 512;
}

export function classify(entry: MountEntry, snapshot: Snapshot, config: Config, images?: ReadonlyMap<string, FileEntry>): Layer {
  const loop = snapshot.loops.get(entry.majorMinor);
  const base = { mountId: entry.mountId, entry, deleted: false };
  if (!loop) return { ...base, tier: "foreign" };
  const tier = tierOf(loop.backingFile, config) ?? "foreign";
  const deleted = loop.deleted || (tier === "slow" && replaced(loop, images?.get(path.basename(loop.backingFile))));
  return { ...base, tier, backingFile: loop.backingFile, deleted };
}

/** Mount point -> its stack of layers, bottom first, for every mount point directly under mountdir. */
export function layerStacks(snapshot: Snapshot, config: Config, dead: ReadonlySet<string> = new Set()): Map<string, Layer[]> {
  const layers = new Map<string, Layer[]>();
  const images = new Map(snapshot.images.map((e) => [e.file, e]));
  for (const [mountPoint, stack] of stacks(snapshot.mounts)) {
    layers.set(
      mountPoint,
      stack.map((e) => {
        const layer = classify(e, snapshot, config, images);
        return layer.tier === "slow" && dead.has(layerId(e.majorMinor, e.mountId)) ? { ...layer, dead: true } : layer;
      }),
    );
  }
  return layers;
}

/** Image paths currently mounted (not deleted) as a slow layer: they win name conflicts. */
export function mountedImages(stacks: Map<string, Layer[]>): Set<string> {
  const out = new Set<string>();
  for (const stack of stacks.values()) {
    for (const layer of stack) if (layer.tier === "slow" && !layer.deleted && layer.backingFile) out.add(layer.backingFile);
  }
  return out;
}

/**
 * What datadir must hold, judged from what is mounted: the datasets of a
 * daemon that has started while datadir is away, before any scan of it
 * could be believed. Each slow mount stands for its image, with the size and
 * mtime of its cached copy when there is one (so that the copy is taken as
 * valid), else its loop device's size. Nothing is done on their account
 * (the holds forbid it); they are listed, attributed reads and kept.
 */
export function provisionalImages(snapshot: Snapshot, config: Config): { images: FileEntry[]; probes: Map<string, Probe> } {
  const cacheByFile = new Map(snapshot.cacheFiles.map((f) => [f.file, f]));
  const images = new Map<string, FileEntry>();
  const probes = new Map<string, Probe>();
  for (const m of snapshot.mounts) {
    const loop = snapshot.loops.get(m.majorMinor);
    if (!loop || loop.deleted || tierOf(loop.backingFile, config) !== "slow" || (m.fsType !== "squashfs" && m.fsType !== "erofs")) continue;
    const file = path.basename(loop.backingFile);
    const copy = cacheByFile.get(file);
    images.set(file, { file, path: loop.backingFile, type: "file", size: copy?.size ?? loop.sizeBytes, mtimeMs: copy?.mtimeMs ?? 0, ino: loop.backing?.ino ?? 0 });
    probes.set(file, { ok: true, kind: m.fsType });
  }
  return { images: [...images.values()].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0)), probes };
}

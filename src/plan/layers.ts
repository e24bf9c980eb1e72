import path from "node:path";
import type { Config } from "../config.js";
import { stackAt, type MountEntry } from "../observe/mountinfo.js";
import type { Snapshot } from "../observe/snapshot.js";

/** One mount of a stack at mountdir/<name>, classified by who owns it. */
export interface Layer {
  mountId: number;
  /** slow: a loop device backed by an image in datadir; cache: by a file in cachedir; foreign: anything else. */
  tier: "slow" | "cache" | "foreign";
  backingFile?: string;
  deleted: boolean;
  entry: MountEntry;
}

/** The tier a loop device's backing file belongs to: an image in datadir, a copy in cachedir, or neither. */
export function tierOf(backingFile: string, config: Pick<Config, "datadir" | "cachedir">): "slow" | "cache" | undefined {
  const dir = path.dirname(backingFile);
  return dir === config.datadir ? "slow" : dir === config.cachedir ? "cache" : undefined;
}

export function classify(entry: MountEntry, snapshot: Snapshot, config: Config): Layer {
  const loop = snapshot.loops.get(entry.majorMinor);
  const base = { mountId: entry.mountId, entry, deleted: false };
  if (!loop) return { ...base, tier: "foreign" };
  return { ...base, tier: tierOf(loop.backingFile, config) ?? "foreign", backingFile: loop.backingFile, deleted: loop.deleted };
}

/** Mount point -> its stack of layers, bottom first, for every mount point directly under mountdir. */
export function layerStacks(snapshot: Snapshot, config: Config): Map<string, Layer[]> {
  const stacks = new Map<string, Layer[]>();
  for (const mountPoint of new Set(snapshot.mounts.map((m) => m.mountPoint))) {
    stacks.set(
      mountPoint,
      stackAt(snapshot.mounts, mountPoint).map((e) => classify(e, snapshot, config)),
    );
  }
  return stacks;
}

/** Image paths currently mounted (not deleted) as a slow layer: they win name conflicts. */
export function mountedImages(stacks: Map<string, Layer[]>): Set<string> {
  const out = new Set<string>();
  for (const stack of stacks.values()) {
    for (const layer of stack) if (layer.tier === "slow" && !layer.deleted && layer.backingFile) out.add(layer.backingFile);
  }
  return out;
}

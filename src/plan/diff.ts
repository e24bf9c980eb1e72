import path from "node:path";
import type { Config } from "../config.js";
import type { FileEntry } from "../observe/images.js";
import { sameVersion, type Catalog, type Dataset } from "./catalog.js";
import type { Layer } from "./layers.js";

/** A copy the transfer pool holds (running or queued). */
export interface TransferInfo {
  name: string;
  imageFile: string;
  size: number;
  mtimeMs: number;
  tmpPath: string;
}

/** A copy as the plan and the report see it: queued or running, and where its bytes come from. */
export interface CopyView extends TransferInfo {
  state: "queued" | "running";
  startedAt?: number;
  /** "server", or a peer's HOST:PORT (fleet/). */
  from?: string;
}

/**
 * Steps that change the machine. `key` groups the steps of one mount point or
 * file: when one fails, the later steps with the same key are skipped, and
 * other keys go on.
 */
export type Action =
  | { kind: "mkdir"; key: string; dataset: string; path: string }
  | { kind: "mount"; key: string; dataset: string; tier: "slow" | "cache"; source: string; target: string; fsType: string }
  | { kind: "unmount"; key: string; dataset: string; tier: Layer["tier"]; target: string; mountId: number; device: string; reason: string }
  /** An adopted mount without nosuid,nodev (the original's plain `mount FILE DIR`): its flags set in place, the mount and its open files kept. */
  | { kind: "harden"; key: string; dataset: string; tier: "slow" | "cache"; target: string; mountId: number; device: string }
  | { kind: "rmdir"; key: string; path: string }
  | { kind: "delete-file"; key: string; dataset?: string; path: string; reason: string }
  | { kind: "start-copy"; key: string; dataset: Dataset }
  | { kind: "cancel-copy"; key: string; dataset: string; reason: string };

/** Something the diff will not fix by itself; reported, once, by the caller. */
export interface Problem {
  key: string;
  dataset?: string;
  message: string;
}

export interface DiffInput {
  config: Config;
  catalog: Catalog;
  stacks: ReadonlyMap<string, Layer[]>;
  cacheFiles: readonly FileEntry[];
  /** Datasets to have on the cache tier. */
  cached: ReadonlySet<string>;
  transfers: ReadonlyMap<string, TransferInfo>;
  /** Datasets in back-off after a failure: left as they are, like pending ones. */
  frozen: ReadonlySet<string>;
  /** Chosen datasets whose copy may start this tick (see admitCopies); all of them when absent. */
  admitted?: ReadonlySet<string>;
  /**
   * Mount points this daemon created. One left empty (its mount failed, then
   * its image went away) is removed; other directories in mountdir are not
   * the daemon's to remove.
   */
  ownedDirs?: ReadonlySet<string>;
}

interface WantedLayer {
  tier: "slow" | "cache";
  source: string;
}

const matches = (layer: Layer, want: WantedLayer) => layer.tier === want.tier && !layer.deleted && layer.backingFile === want.source;

/** The mount flags every mount of ours has: no setuid binary nor device node from an image anyone could write. */
export const HARDENED_FLAGS = ["nosuid", "nodev"] as const;

/** A mount lacking one of HARDENED_FLAGS (mountinfo's per-mount options, "ro,relatime"). */
export function needsHardening(options: string): boolean {
  const flags = options.split(",");
  return HARDENED_FLAGS.some((f) => !flags.includes(f));
}

/**
 * The mount steps that make one dataset's stack [slow] or [slow, cache]:
 * keep the right layers from the bottom, unmount the rest from the top,
 * mount what is missing; harden a right top mounted without our flags.
 */
function stackActions(d: Dataset, stack: readonly Layer[], wantCache: boolean): Action[] {
  const actions: Action[] = [];
  const key = d.mountPoint;
  const wanted: WantedLayer[] = [{ tier: "slow", source: d.imagePath }];
  if (wantCache && d.cache === "valid") wanted.push({ tier: "cache", source: d.cachePath });
  let keep = 0;
  while (keep < stack.length && keep < wanted.length && matches(stack[keep] as Layer, wanted[keep] as WantedLayer)) keep++;
  // A dead slow layer (plan/slow-layers.ts) stays only while a right layer covers it: it serves no open then.
  const dead = stack.findIndex((l, j) => j < keep && l.dead === true && j + 1 >= keep);
  if (dead >= 0) keep = dead;
  for (let j = stack.length - 1; j >= keep; j--) {
    const layer = stack[j] as Layer;
    const reason = layer.deleted ? "backing file deleted or replaced" : layer.dead ? "its reads fail while its image in datadir reads (a dead file handle): attached again" : layer.tier === "cache" && d.cache === "stale" ? "stale cached copy" : layer.tier === "cache" ? "dropped from cache" : "replaced";
    actions.push({ kind: "unmount", key, dataset: d.name, tier: layer.tier, target: key, mountId: layer.mountId, device: layer.entry.majorMinor, reason });
  }
  if (stack.length === 0) actions.push({ kind: "mkdir", key, dataset: d.name, path: key });
  for (let j = keep; j < wanted.length; j++) {
    const w = wanted[j] as WantedLayer;
    actions.push({ kind: "mount", key, dataset: d.name, tier: w.tier, source: w.source, target: key, fsType: d.kind });
  }
  // A stack already right whose top was mounted without our flags (adopted from the original): hardened in place.
  // Only the top can be reached by its path; one beneath is hardened when it is the top again.
  const top = stack.at(-1);
  if (keep === stack.length && keep === wanted.length && top && top.tier !== "foreign" && needsHardening(top.entry.options)) {
    actions.push({ kind: "harden", key, dataset: d.name, tier: top.tier, target: key, mountId: top.mountId, device: top.entry.majorMinor });
  }

  return actions;
}

/**
 * Observed state + wanted state -> the actions that turn one into the other.
 * Pure. Level-based: it never relies on what earlier ticks did, so a restart
 * or a missed tick changes nothing, and right mounts are left alone.
 */
export function diff(input: DiffInput): { actions: Action[]; problems: Problem[] } {
  const { config, catalog, stacks, cached, transfers } = input;
  const actions: Action[] = [];
  const problems: Problem[] = [];
  const handled = new Set<string>();
  const keepFiles = new Set<string>();

  // 1. Datasets: make each mount stack equal to [slow] or [slow, cache].
  for (const d of catalog.datasets.values()) {
    const key = d.mountPoint;
    handled.add(key);
    keepFiles.add(d.cachePath);
    if (input.frozen.has(d.name)) continue;
    const stack = stacks.get(key) ?? [];
    const transfer = transfers.get(d.name);
    const wantCache = cached.has(d.name);

    if (transfer && (!wantCache || transfer.imageFile !== d.imageFile || !sameVersion(transfer, d))) {
      actions.push({ kind: "cancel-copy", key, dataset: d.name, reason: wantCache ? "image changed" : "no longer chosen" });
    }
    if (stack.some((l) => l.tier === "foreign")) {
      problems.push({ key, dataset: d.name, message: `mount point ${key} holds a mount that is not ours; leaving it alone` });
      continue;
    }

    actions.push(...stackActions(d, stack, wantCache));

    if (d.cache === "stale") actions.push({ kind: "delete-file", key, dataset: d.name, path: d.cachePath, reason: "stale cached copy" });
    else if (d.cache === "valid" && !wantCache) actions.push({ kind: "delete-file", key, dataset: d.name, path: d.cachePath, reason: "dropped from cache" });
    if (wantCache && d.cache !== "valid" && !transfer && (input.admitted?.has(d.name) ?? true)) {
      // The copy removes a temporary file left by a crash itself; deleting it here too would race with it.
      keepFiles.add(d.tmpPath);
      actions.push({ kind: "start-copy", key, dataset: d });
    }
  }

  // 2. Pending names (image still changing) keep their mounts and copies as they are.
  for (const name of catalog.pending) handled.add(path.join(config.mountdir, name));
  for (const file of catalog.pendingFiles) keepFiles.add(path.join(config.cachedir, file));

  // 3. Copies whose image is gone or changing.
  for (const t of transfers.values()) {
    keepFiles.add(t.tmpPath);
    if (!catalog.datasets.has(t.name)) {
      actions.push({ kind: "cancel-copy", key: path.join(config.mountdir, t.name), dataset: t.name, reason: catalog.pending.has(t.name) ? "image changing" : "image removed" });
    }
  }

  // 4. Our mounts at names no dataset wants: unmount from the top, stopping at anything not ours.
  for (const [mountPoint, stack] of stacks) {
    if (handled.has(mountPoint) || !stack.some((l) => l.tier !== "foreign")) continue;
    const dataset = path.basename(mountPoint);
    let j = stack.length - 1;
    for (; j >= 0 && (stack[j] as Layer).tier !== "foreign"; j--) {
      const layer = stack[j] as Layer;
      actions.push({ kind: "unmount", key: mountPoint, dataset, tier: layer.tier, target: mountPoint, mountId: layer.mountId, device: layer.entry.majorMinor, reason: "image removed" });
    }
    if (j < 0) actions.push({ kind: "rmdir", key: mountPoint, path: mountPoint });
    else problems.push({ key: mountPoint, dataset, message: `mount point ${mountPoint} has a mount that is not ours on top of ours; leaving it alone` });
  }

  // 4b. Empty mount points of ours that no dataset wants any more.
  for (const dir of input.ownedDirs ?? []) {
    if (!handled.has(dir) && !stacks.has(dir)) actions.push({ kind: "rmdir", key: dir, path: dir });
  }

  // 5. Files in cachedir that belong to no dataset. Only regular files: anything else is not ours to delete.
  for (const f of input.cacheFiles) {
    if (f.type !== "file" || keepFiles.has(f.path)) continue;
    actions.push({ kind: "delete-file", key: f.path, path: f.path, reason: "belongs to no image" });
  }
  return { actions, problems };
}

/** The dataset an action is about, if any. */
export function actionDataset(a: Action): string | undefined {
  switch (a.kind) {
    case "start-copy":
      return a.dataset.name;
    case "mount":
    case "unmount":
    case "harden":
    case "cancel-copy":
    case "delete-file":
    case "mkdir":
      return a.dataset;
    case "rmdir":
      return undefined;
  }
}

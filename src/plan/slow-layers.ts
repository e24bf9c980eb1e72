/**
 * Slow layers whose file handle died: the image in datadir reads, its loop
 * device does not (observe/probe.ts, probeSlowLayer). A FUSE file system
 * that reconnected (sshfs, s3fs, rclone, gcsfuse) or was killed and mounted
 * again, or an NFS handle gone stale, leaves every loop device attached
 * through it on a handle that only fails: new opens in an uncached dataset
 * get EIO for as long as the mount stays. Such a layer is marked dead, and
 * the diff attaches the image again from datadir in its place (plan/diff.ts).
 * Under a working cache layer it stays until the cache layer comes off: a
 * layer cannot be slid beneath another with mount(8), and taking both off
 * to rebuild the stack would fail new opens in a dataset that works. Pure.
 */
import type { ProbeRound, SlowTarget } from "../observe/probe.js";

/**
 * Errors of a dead handle, not of a slow or busy server (a timeout is
 * availability's business) nor of a loop device detached meanwhile (ENXIO).
 */
const DEAD_HANDLE_ERRORS = new Set(["EIO", "ESTALE", "ENOTCONN", "ECONNABORTED", "ENODEV", "EREMOTEIO", "ECOMM", "EBADF"]);

/** How long the other layers of a file system where one was found dead (or that came back) are suspect: read first, many a round. */
export const SUSPECT_MS = 120_000;

/** Suspect: every slow layer, whatever its file system (datadir came back or moved). */
export const ALL_FILE_SYSTEMS = "*";

export interface DeadLayer {
  dataset: string;
  /** The loop device ("major:minor") and the mount holding it. */
  device: string;
  mountId: number;
  /** The read that failed, and how. */
  evidence: string;
  at: number;
}

export interface SlowLayers {
  /** By layerId. */
  dead: ReadonlyMap<string, DeadLayer>;
  /** Backing file systems ("major:minor", or ALL_FILE_SYSTEMS) whose layers are suspect: since when (each layer is read once after that), until when (ms). */
  suspect: ReadonlyMap<string, Suspicion>;
  /** Layers found dead since start (a counter). */
  foundTotal: number;
}

export interface Suspicion {
  since: number;
  until: number;
}

export const noDeadLayers: SlowLayers = { dead: new Map(), suspect: new Map(), foundTotal: 0 };

/** A slow layer as the probes and the diff know it: its loop device and the mount holding it. */
export const layerId = (device: string, mountId: number) => `${device}@${mountId}`;

/**
 * The slow layers after a round of probes.
 * @param live the layers mounted now (layerId): a dead one gone is forgotten
 */
export function assessSlowLayers(previous: SlowLayers, round: ProbeRound | undefined, live: ReadonlySet<string>, now: number): { layers: SlowLayers; found: DeadLayer[] } {
  const dead = new Map([...previous.dead].filter(([id]) => live.has(id)));
  const suspect = new Map([...previous.suspect].filter(([, s]) => s.until > now));
  const found: DeadLayer[] = [];
  for (const r of round?.results ?? []) {
    if (r.target.tier !== "slow" || r.ok || !("image" in r) || !r.image.ok || !DEAD_HANDLE_ERRORS.has(r.code)) continue;
    const t: SlowTarget = r.target;
    const id = layerId(t.device, t.mountId);
    if (!live.has(id) || dead.has(id)) continue;
    const layer = { dataset: t.dataset, device: t.device, mountId: t.mountId, evidence: `${r.message} (${r.code}) while ${t.image} reads`, at: round?.at ?? now };
    dead.set(id, layer);
    found.push(layer);
    // Its neighbours on the same file system most likely lost their handles too.
    suspect.set(t.backingDev ?? ALL_FILE_SYSTEMS, { since: now, until: now + SUSPECT_MS });
  }
  const same = found.length === 0 && dead.size === previous.dead.size && suspect.size === previous.suspect.size && [...suspect].every(([k, v]) => previous.suspect.get(k) === v);
  return { layers: same ? previous : { dead, suspect, foundTotal: previous.foundTotal + found.length }, found };
}

/**
 * Whether the server stalls, from the probes' reads of images in datadir
 * (O_DIRECT: no cache answers them): one that did not finish starts a
 * stall, one that read ends it; a round with neither leaves it as it was
 * (a stuck round starts no other). The message, while it stalls.
 */
export function stalledRead(previous: string | undefined, round: ProbeRound | undefined): string | undefined {
  const images = (round?.results ?? []).flatMap((r) => ("image" in r ? [{ image: r.target.image, read: r.image }] : []));
  const stuck = images.find((i) => !i.read.ok && i.read.timedOut);
  if (stuck && !stuck.read.ok) return previous ?? `a read of ${stuck.image} did not finish (${stuck.read.message})`;
  return images.some((i) => i.read.ok) ? undefined : previous;
}

/** These backing file systems' layers are suspect from now (the kernel saw one of their loop devices fail). */
export function suspect(layers: SlowLayers, fileSystems: readonly string[], now: number): SlowLayers {
  const next = new Map(layers.suspect);
  for (const fs of fileSystems) if (!next.has(fs)) next.set(fs, { since: now, until: now + SUSPECT_MS });
  return next.size === layers.suspect.size ? layers : { ...layers, suspect: next };
}

/** datadir became available again, or moved to another file system: every slow layer is suspect. */
export function suspectAll(layers: SlowLayers, now: number): SlowLayers {
  return { ...layers, suspect: new Map([...layers.suspect, [ALL_FILE_SYSTEMS, { since: now, until: now + SUSPECT_MS }]]) };
}

/** Since when a slow layer on `backingDev` is suspect (the latest suspicion), if it is: to be read once after that, first. */
export function suspectSince(layers: SlowLayers, backingDev: string | undefined): number | undefined {
  const all = layers.suspect.get(ALL_FILE_SYSTEMS)?.since;
  const own = backingDev === undefined ? undefined : layers.suspect.get(backingDev)?.since;
  return all === undefined ? own : own === undefined ? all : Math.max(all, own);
}

/**
 * Reading the devices under the datasets' layers, not the page cache, in the
 * background: the tick never waits for a probe (LayerProbe).
 *
 * A cached copy: one block with O_DIRECT through its loop device (or the
 * file), in a child with a deadline. A drive that returns read errors
 * answers EIO here even while every page read so far is still in memory.
 *
 * A slow layer: its loop device holds the image open by the file handle it
 * was attached with. A FUSE file system that reconnected (sshfs, s3fs),
 * one killed and mounted again, or an NFS handle gone stale, leaves that
 * handle dead while datadir itself answers. The same block is first read
 * from the image in datadir with O_DIRECT (a fresh handle: the server
 * answers), then through the loop device with the device switched to
 * direct I/O for the read (`losetup --direct-io`), so that the loop driver
 * asks the file server by its own handle: otherwise the image's pages in
 * the client's page cache answer for a handle that is dead (every page a
 * job read before). Switched back after; a device already in direct I/O is
 * left as it is.
 */
import { readFile } from "node:fs/promises";
import pLimit from "p-limit";
import type { Clock } from "../lib/clock.js";
import { CommandFailedError, type Runner } from "../lib/exec.js";
import { parseErrorLine } from "./scan.js";

/** What to read: a cached copy (a loop device /dev/loopN, or the file), of `sizeBytes`. */
export interface CacheTarget {
  tier: "cache";
  dataset: string;
  path: string;
  sizeBytes: number;
}

/** A slow layer: its loop device, and the image in datadir it was attached from. */
export interface SlowTarget {
  tier: "slow";
  dataset: string;
  /** /dev/loopN. */
  path: string;
  sizeBytes: number;
  /** The image in datadir, read first (a fresh handle). */
  image: string;
  /** The loop device's "major:minor" and the mount holding it: what a dead layer is known by. */
  device: string;
  mountId: number;
  /** The device of the file system the image was attached from (LoopDevice.backing.dev). */
  backingDev?: string;
  /** Its file system's handles are suspect since then (plan/slow-layers.ts): read once after that, before the others. */
  suspectSince?: number;
}

export type ProbeTarget = CacheTarget | SlowTarget;

export type ProbeFailure = { ok: false; code: string; message: string; timedOut: boolean };
export type ReadResult = { ok: true } | ProbeFailure;

export type ProbeResult =
  | ({ target: CacheTarget } & ReadResult)
  /** `image`: the read of the image in datadir (the fresh handle); the rest: the read through the loop device. */
  | ({ target: SlowTarget; image: ReadResult } & ReadResult);

/** One round of probes, as the next tick takes it. */
export interface ProbeRound {
  at: number;
  results: ProbeResult[];
}

const BLOCK = 4096;

function failure(err: unknown, file: string, timeoutMs: number): ProbeFailure {
  if (err instanceof CommandFailedError) {
    if (err.timedOut || err.abandoned) return { ok: false, code: "ETIMEDOUT", message: `${file}: no answer in ${Math.round(timeoutMs / 1000)} s`, timedOut: true };
    const line = err.stderr.split("\n").find((l) => l.trim() !== "") ?? "";
    const e = parseErrorLine(line);
    return { ok: false, code: e.code, message: `${file}: ${e.text}`, timedOut: false };
  }
  return { ok: false, code: "EIO", message: `${file}: ${err instanceof Error ? err.message : String(err)}`, timedOut: false };
}

/** dd's read of one block of `file` at block `skip`, with these input flags; where O_DIRECT is refused (tmpfs: EINVAL), without. */
async function readBlock(run: Runner, file: string, skip: number, flags: readonly string[], timeoutMs: number, signal?: AbortSignal): Promise<ReadResult> {
  const dd = (f: readonly string[]) => run("dd", [`if=${file}`, "of=/dev/null", `bs=${BLOCK}`, "count=1", `skip=${skip}`, ...(f.length > 0 ? [`iflag=${f.join(",")}`] : []), "status=none"], { timeoutMs, signal });
  try {
    try {
      await dd(flags);
    } catch (err) {
      if (flags.includes("direct") && err instanceof CommandFailedError && !err.timedOut && /Invalid argument/.test(err.stderr)) await dd(flags.filter((f) => f !== "direct"));
      else throw err;
    }
    return { ok: true };
  } catch (err) {
    return failure(err, file, timeoutMs);
  }
}

const blockAt = (offset: number, sizeBytes: number) => Math.max(0, Math.floor(Math.min(offset, sizeBytes - BLOCK) / BLOCK));

/** Reads one block of a cached copy at `offset` (rounded down to a block) with O_DIRECT. */
export async function probeRead(run: Runner, target: CacheTarget, offset: number, timeoutMs: number, signal?: AbortSignal, reading?: () => void): Promise<ProbeResult> {
  reading?.();
  return { target, ...(await readBlock(run, target.path, blockAt(offset, target.sizeBytes), ["direct"], timeoutMs, signal)) };
}

/** Whether a loop device does direct I/O on its backing file now (/sys/block/loopN/loop/dio). */
async function directIo(sysRoot: string, device: string): Promise<boolean | undefined> {
  try {
    return (await readFile(`${sysRoot}/block/${device.replace(/^\/dev\//, "")}/loop/dio`, "utf8")).trim() === "1";
  } catch {
    return undefined;
  }
}

/**
 * Reads one block of a slow layer: from the image in datadir, then through
 * its loop device in direct I/O. A failure of the first is the server's
 * (availability's business), and the second is then not tried.
 */
export async function probeSlowLayer(run: Runner, target: SlowTarget, offset: number, timeoutMs: number, signal?: AbortSignal, sysRoot = "/sys", reading?: () => void): Promise<ProbeResult> {
  const skip = blockAt(offset, target.sizeBytes);
  const image = await readBlock(run, target.image, skip, ["direct"], timeoutMs, signal);
  if (!image.ok) return { target, image, ...image };
  // Only while the server answers: switching waits for the device's reads in flight.
  let switched = false;
  if ((await directIo(sysRoot, target.path)) === false) {
    try {
      await run("losetup", ["--direct-io=on", target.path], { timeoutMs, signal });
      switched = true;
    } catch {
      // A kernel or file system without it: the page cache may answer for the handle, a later probe may not.
    }
  }
  try {
    reading?.();
    return { target, image, ...(await readBlock(run, target.path, skip, ["direct"], timeoutMs, signal)) };
  } finally {
    if (switched) await run("losetup", ["--direct-io=off", target.path], { timeoutMs, signal }).catch(() => undefined);
  }
}

/** Rotates through a list that changes between rounds: the next `n` after the last taken. */
class Rotation {
  private cursor = 0;
  take<T>(list: readonly T[], n: number): T[] {
    if (list.length === 0) return [];
    const start = this.cursor % list.length;
    const picked = Array.from({ length: Math.min(n, list.length) }, (_, i) => list[(start + i) % list.length] as T);
    this.cursor = start + picked.length;
    return picked;
  }
}

export interface ProbeOptions {
  /** A round every so often (read each round: scan_timeout may change with a reload). */
  everyMs: () => number;
  /** Cached copies read a round (the local device: cheap). */
  perRound: number;
  /** Slow layers read a round: each costs the file server a few operations (open, read, release; the loop device's read). */
  slowPerRound: number;
  /** Suspect slow layers read a round on top (SlowTarget.suspectSince). */
  urgentPerRound: number;
  /** Reads at once. */
  concurrency: number;
  timeoutMs: () => number;
  lifetime?: AbortSignal;
  /** Where sysfs is (tests). */
  sysRoot?: string;
  /**
   * Told of each read through a loop device (by name, "loop3") before it
   * starts, and again if it fails (then it most likely was not counted):
   * a probe is not a job's read (Observer.probeRead).
   */
  onLoopRead?: (device: string, bytes: number, failed: boolean) => void;
  /** The liveness reads of datadir's images (kickLiveness); on unless false (tests of the rounds alone). */
  liveness?: boolean;
}

/**
 * Probes a few cached copies and slow layers every `everyMs`, in the
 * background, round robin; the tick hands it its targets and takes the last
 * finished round. At 1,000 cached datasets a copy is read every few
 * minutes, and the cache device (one for all of them) every round. Suspect
 * slow layers (their file system reconnected, or another layer on it was
 * found dead) go first, many a round, each once.
 */
export class LayerProbe {
  private readonly cache = new Rotation();
  private readonly slow = new Rotation();
  private readonly urgent = new Rotation();
  /** Suspect layers already read since their suspicion ("major:minor@mountId#since"). */
  private readonly urgentDone = new Set<string>();
  private rounds = 0;
  private startedAt = -Infinity;
  private running = false;
  private finished?: ProbeRound;
  /** Datasets whose layers changed while the running round read them: its results about them are void. */
  private stale = new Set<string>();
  /** The server's liveness: one image read a period, apart from the rounds (a round stuck on a dead server starts no other). */
  private readonly live = new Rotation();
  private liveStartedAt = -Infinity;
  private liveRunning = false;
  private liveResults: ProbeResult[] = [];

  constructor(
    private readonly run: Runner,
    private readonly clock: Clock,
    private readonly options: ProbeOptions,
  ) {}

  /** Starts a round if one is due and none runs, and a read of an image in datadir likewise. */
  kick(targets: readonly ProbeTarget[]): void {
    const now = this.clock.monotonic();
    const picked = this.startRound(targets, now);
    // A round that reads a slow layer reads an image of datadir itself: no liveness read besides (half the file server's operations).
    // Judged on what the round picked, not on what it could have: a round of suspects all read already (or of nothing) reads no image,
    // and a stall would then never be seen to end (the churn soak held datadir for good).
    if (picked.some((t) => t.tier === "slow")) this.liveStartedAt = now;
    else this.kickLiveness(targets);
  }

  /** Starts a round if one is due and none runs; what it reads (nothing: none started). */
  private startRound(targets: readonly ProbeTarget[], now: number): readonly ProbeTarget[] {
    if (this.running || targets.length === 0 || now - this.startedAt < this.options.everyMs()) return [];
    const caches = targets.filter((t): t is CacheTarget => t.tier === "cache");
    const slows = targets.filter((t): t is SlowTarget => t.tier === "slow");
    const idOf = (t: SlowTarget) => `${t.device}@${t.mountId}#${t.suspectSince ?? ""}`;
    const suspects = slows.filter((t) => t.suspectSince !== undefined);
    // Forgotten once no longer suspect: read again at the next suspicion.
    const suspectIds = new Set(suspects.map(idOf));
    for (const id of this.urgentDone) if (!suspectIds.has(id)) this.urgentDone.delete(id);
    const urgent = this.urgent.take(suspects.filter((t) => !this.urgentDone.has(idOf(t))), this.options.urgentPerRound);
    for (const t of urgent) this.urgentDone.add(idOf(t));
    const picked: ProbeTarget[] = [...urgent, ...this.cache.take(caches, this.options.perRound), ...this.slow.take(slows.filter((t) => t.suspectSince === undefined), this.options.slowPerRound)];
    if (picked.length === 0) return [];
    this.startedAt = now;
    this.running = true;
    this.stale = new Set();
    const round = this.rounds++;
    const limit = pLimit(this.options.concurrency);
    void (async () => {
      const results = await Promise.all(
        picked.map((t, i) =>
          limit(() => {
            // Spread over the layer: its start, and a different place each round.
            const offset = ((round + i) * 7919 * BLOCK) % Math.max(BLOCK, t.sizeBytes);
            const timeoutMs = this.options.timeoutMs();
            const loop = /^\/dev\/(loop\d+)$/.exec(t.path)?.[1];
            const counted = (failed: boolean) => (loop === undefined ? undefined : this.options.onLoopRead?.(loop, BLOCK, failed));
            return (t.tier === "cache" ? probeRead(this.run, t, offset, timeoutMs, this.options.lifetime, () => counted(false)) : probeSlowLayer(this.run, t, offset, timeoutMs, this.options.lifetime, this.options.sysRoot, () => counted(false))).then((r) => {
              // A failed read of the loop device (not of the image before it) counted nothing, most likely.
              if (!r.ok && !("image" in r && !r.image.ok)) counted(true);
              return r;
            });
          }),
        ),
      );
      // A mount ID and a loop device are reused at once: a result about a layer replaced meanwhile would name the new one.
      this.finished = { at: this.clock.now(), results: results.filter((r) => !this.stale.has(r.target.dataset)) };
      this.running = false;
    })();
    return picked;
  }

  /**
   * One block of one image in datadir with O_DIRECT (no cache answers it),
   * every period, whatever the rounds do: the per-tick stat of datadir is
   * answered from the attribute cache while the server stalls. Its result
   * goes with the next round taken, as a slow layer's whose image did not
   * read, or did (plan/slow-layers.ts, stalledRead).
   */
  private kickLiveness(targets: readonly ProbeTarget[]): void {
    const now = this.clock.monotonic();
    if (this.options.liveness === false || this.liveRunning || now - this.liveStartedAt < this.options.everyMs()) return;
    const [target] = this.live.take(targets.filter((t): t is SlowTarget => t.tier === "slow"), 1);
    if (!target) return;
    this.liveStartedAt = now;
    this.liveRunning = true;
    const skip = blockAt(((this.rounds * 7919) % 1024) * BLOCK, target.sizeBytes);
    const timeoutMs = this.options.timeoutMs();
    let told = false;
    // Only what the image says: the loop device was not read (ok: no evidence against it).
    const tell = (image: ReadResult) => {
      if (told) return;
      told = true;
      this.liveResults.push(image.ok ? { target, image, ok: true } : { target, image, ...image });
    };
    // Said at the deadline: a read stuck in the kernel takes a while more to be killed, or abandoned (lib/exec.ts).
    const late = setTimeout(() => tell({ ok: false, code: "ETIMEDOUT", message: `${target.image}: no answer in ${Math.round(timeoutMs / 1000)} s`, timedOut: true }), timeoutMs);
    late.unref();
    void readBlock(this.run, target.image, skip, ["direct"], timeoutMs, this.options.lifetime).then((image) => {
      clearTimeout(late);
      tell(image);
      this.liveRunning = false;
    });
  }

  /** The layers of these datasets were just changed: what a round in flight says of them is void. */
  changed(datasets: Iterable<string>): void {
    if (this.running) for (const name of datasets) this.stale.add(name);
  }

  /** The last round finished since the previous call, if any, with the liveness reads finished since. */
  take(): ProbeRound | undefined {
    const round = this.finished;
    const live = this.liveResults;
    this.finished = undefined;
    this.liveResults = [];
    if (!round && live.length === 0) return undefined;
    return { at: round?.at ?? this.clock.now(), results: [...(round?.results ?? []), ...live] };
  }
}

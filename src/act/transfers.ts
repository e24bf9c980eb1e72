import { chmod, open, rename, stat, unlink } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import { errnoCode, errorMessage } from "../errors.js";
import { sameVersion, type Dataset } from "../plan/catalog.js";
import type { TransferInfo } from "../plan/diff.js";
import { MiB } from "../units.js";
import type { Runner } from "../lib/exec.js";
import { systemClock, type Clock } from "../lib/clock.js";

/** A copy may be long (terabytes over NFS); a stalled one is cut by rsync's I/O timeout or cp's stall watchdog (commandTimeoutS). */
const COPY_TIMEOUT_MS = 48 * 3600 * 1000;

/** Pause between two fdatasync calls on a running copy's temporary file; see flushWhile. */
const FLUSH_PAUSE_MS = 100;

/** How often the stall watchdog looks at a cp copy's temporary file. */
const STALL_CHECK_MS = 1000;

export interface Transfer extends TransferInfo {
  state: "queued" | "running";
  source: string;
  dest: string;
  startedAt?: number;
  abort: AbortController;
  /** Settles when a running copy has ended and its temporary file is gone. */
  done?: Promise<void>;
}

export type CopyOutcome = { ok: true; bytes: number; ms: number } | { ok: false; error: string; cancelled: boolean };

export interface TransferPoolOptions {
  run: Runner;
  maxCopies: number;
  /** rsync gives up when no data moves for this long (a dead NFS server): the copy fails and is retried with back-off. */
  commandTimeoutS: number;
  /** Bytes per second of each copy, so that filling the cache does not starve jobs reading the shared storage; 0: no limit. */
  copyBwlimit: number;
  logger: Logger;
  /** Called when a copy ends, whatever the outcome; the daemon wakes its loop to mount the copy. */
  onSettled: (name: string, outcome: CopyOutcome, transfer: Transfer) => void;
  /**
   * Where the bytes come from: peers, or the file server through `fromServer`
   * (fleet/peer-fill.ts). The file server alone when absent.
   */
  fill?: (t: Transfer, fromServer: () => Promise<void>) => Promise<unknown>;
  clock?: Clock;
  /**
   * Size and mtime of an image, to check that it did not change during its
   * copy. The image is on the file server: the daemon reads it through
   * datadir's one-at-a-time channel (observe/dir-watch.ts), never in its own
   * threads. fs.stat by default (tests).
   */
  statImage?: (file: string, signal: AbortSignal) => Promise<{ size: number; mtimeMs: number }>;
}

/**
 * Copies run here, in the background, at most maxCopies at once; the loop
 * never awaits one. Each goes to a temporary name, is flushed, verified
 * against the image (size, mtime), and only then renamed into place, so a
 * file under the final name is always a complete copy.
 */
export class TransferPool {
  private readonly transfers = new Map<string, Transfer>();
  /** Since start, for the status report and metrics. */
  readonly counters = { started: 0, finished: 0, failed: 0, cancelled: 0, bytes: 0 };

  constructor(private readonly options: TransferPoolOptions) {}

  private get clock(): Clock {
    return this.options.clock ?? systemClock;
  }

  private now(): number {
    return this.clock.now();
  }

  /** New limits from a reloaded configuration; running copies keep the ones they started with. */
  reconfigure(limits: { maxCopies: number; copyBwlimit: number; commandTimeoutS: number }): void {
    Object.assign(this.options, limits);
    this.pump();
  }

  /** Running and queued copies, by dataset name. */
  get all(): ReadonlyMap<string, Transfer> {
    return this.transfers;
  }

  start(d: Dataset): void {
    if (this.transfers.has(d.name)) return;
    this.transfers.set(d.name, {
      name: d.name,
      imageFile: d.imageFile,
      size: d.size,
      mtimeMs: d.mtimeMs,
      source: d.imagePath,
      dest: d.cachePath,
      tmpPath: d.tmpPath,
      state: "queued",
      abort: new AbortController(),
    });
    this.options.logger.info({ dataset: d.name, bytes: d.size }, "copy queued");
    this.pump();
  }

  /** Cancels a copy; resolves once its temporary file is gone. */
  async cancel(name: string, reason: string): Promise<void> {
    const t = this.transfers.get(name);
    if (!t) return;
    this.options.logger.info({ dataset: name, reason }, "copy cancelled");
    t.abort.abort();
    if (t.state === "queued") this.transfers.delete(name);
    await t.done;
  }

  async cancelAll(reason: string): Promise<void> {
    await Promise.all([...this.transfers.keys()].map((name) => this.cancel(name, reason)));
  }

  private pump(): void {
    let running = [...this.transfers.values()].filter((t) => t.state === "running").length;
    for (const t of this.transfers.values()) {
      if (running >= this.options.maxCopies) break;
      if (t.state !== "queued") continue;
      t.state = "running";
      t.startedAt = this.now();
      running++;
      this.counters.started++;
      t.done = this.copy(t).then((outcome) => {
        this.transfers.delete(t.name);
        if (outcome.ok) {
          this.counters.finished++;
          this.counters.bytes += outcome.bytes;
        } else if (outcome.cancelled) this.counters.cancelled++;
        else this.counters.failed++;
        this.options.onSettled(t.name, outcome, t);
        this.pump();
      });
    }
  }

  private async copy(t: Transfer): Promise<CopyOutcome> {
    const log = this.options.logger.child({ dataset: t.name });
    const started = this.clock.monotonic();
    log.info({ source: t.source, bytes: t.size }, "copy started");
    try {
      await removeIfPresent(t.tmpPath);
      const fill = this.options.fill;
      const copying = fill ? fill(t, () => this.runCopy(t)) : this.runCopy(t);
      await Promise.all([copying, flushWhile(t.tmpPath, copying)]);
      if (t.abort.signal.aborted) throw new Error("cancelled");
      await fsyncFile(t.tmpPath);
      const [copied, image] = await Promise.all([stat(t.tmpPath), (this.options.statImage ?? ((f: string) => stat(f)))(t.source, t.abort.signal)]);
      if (!sameVersion(image, t)) throw new Error("image changed during the copy");
      if (!sameVersion(copied, t)) {
        throw new Error(`copy does not match the image (size ${copied.size} vs ${t.size}, mtime ${copied.mtimeMs} vs ${t.mtimeMs})`);
      }
      // Readable by jobs' users through the mount only; never writable by them.
      await chmod(t.tmpPath, 0o644);
      if (t.abort.signal.aborted) throw new Error("cancelled");
      await rename(t.tmpPath, t.dest);
      await fsyncFile(path.dirname(t.dest));
      const ms = Math.round(this.clock.monotonic() - started);
      log.info({ bytes: t.size, ms, mbps: Number((t.size / MiB / Math.max(ms / 1000, 0.001)).toFixed(1)) }, "copy finished");
      return { ok: true, bytes: t.size, ms };
    } catch (err) {
      const cancelled = t.abort.signal.aborted;
      await removeIfPresent(t.tmpPath).catch((e: unknown) => log.error({ err: errorMessage(e), file: t.tmpPath }, "cannot remove temporary file"));
      if (!cancelled) log.error({ err: errorMessage(err), ms: Math.round(this.clock.monotonic() - started) }, "copy failed");
      return { ok: false, error: errorMessage(err), cancelled };
    }
  }

  /**
   * cp lets the kernel copy (copy_file_range, or a reflink when the image and
   * the cache share a btrfs or XFS file system): a third of rsync's CPU and
   * twice its ceiling on the testbed (BENCHMARKS.md). rsync stays for
   * copy_bwlimit, which cp cannot do. A watchdog cuts either when its
   * temporary file stops growing for commandTimeoutS (a dead NFS server): cp
   * has no I/O timeout of its own, and rsync's cannot fire while a read is
   * stuck in the kernel.
   */
  private async runCopy(t: Transfer): Promise<void> {
    const timeoutS = Math.max(1, Math.round(this.options.commandTimeoutS));
    const [program, args] =
      this.options.copyBwlimit > 0
        ? ["rsync", ["--inplace", "--times", `--timeout=${timeoutS}`, `--bwlimit=${Math.max(1, Math.round(this.options.copyBwlimit / 1024))}`, "--", t.source, t.tmpPath]]
        : // In order, no holes: peers follow the file as it grows (fleet/follow.ts).
          ["cp", ["--reflink=auto", "--sparse=never", "--preserve=timestamps", "--", t.source, t.tmpPath]];
    const stop = new AbortController();
    const cancel = (): void => stop.abort();
    t.abort.signal.addEventListener("abort", cancel, { once: true });
    let stalled = false;
    let size = -1;
    let movedAt = this.now();
    const watchdog = setInterval(() => {
      // A file not created yet counts as no progress: the copy may hang opening the image on a dead server.
      void stat(t.tmpPath).then(
        (st) => st.size,
        () => -1,
      ).then((now) => {
        if (now !== size) {
          size = now;
          movedAt = this.now();
        } else if (this.now() - movedAt > timeoutS * 1000) {
          stalled = true;
          stop.abort();
        }
      });
    }, STALL_CHECK_MS);
    try {
      await this.options.run(program, args, { timeoutMs: COPY_TIMEOUT_MS, signal: stop.signal });
    } catch (err) {
      if (stalled) throw new Error(`no data moved for ${timeoutS} s`);
      throw err;
    } finally {
      clearInterval(watchdog);
      t.abort.signal.removeEventListener("abort", cancel);
    }
  }
}

/**
 * Writes a copy back while it is made. Otherwise the page cache keeps it
 * dirty until dirty_background_ratio (10% of RAM: 51 GB on a 512 GB node)
 * and the final fsync writes nearly all of it after the last byte was read:
 * 8-13% of the copy's time on the testbed (BENCHMARKS.md).
 */
export async function flushWhile(file: string, copying: Promise<unknown>): Promise<void> {
  let finished = false;
  const settled = copying.then(
    () => undefined,
    () => undefined,
  );
  void settled.then(() => {
    finished = true;
  });
  while (!finished) {
    try {
      const handle = await open(file, "r");
      try {
        await handle.datasync();
      } finally {
        await handle.close();
      }
    } catch {
      // not created yet, or removed by a failed copy
    }
    await Promise.race([new Promise((resolve) => setTimeout(resolve, FLUSH_PAUSE_MS)), settled]);
  }
}

async function removeIfPresent(file: string): Promise<void> {
  try {
    await unlink(file);
  } catch (err) {
    if (errnoCode(err) !== "ENOENT") throw err;
  }
}

export async function fsyncFile(file: string): Promise<void> {
  const handle = await open(file, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

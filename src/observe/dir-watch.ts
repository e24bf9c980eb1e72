import pLimit from "p-limit";
import { ScanError } from "./scan.js";
import { systemClock, type Clock } from "../lib/clock.js";

/** What the observer has of one directory this tick. */
export type ScanView<T> =
  /** A scan finished since the previous tick. */
  | { kind: "fresh"; result: T; at: number }
  /** A scan failed since the previous tick. */
  | { kind: "failed"; code: string; message: string; timedOut: boolean; at: number }
  /** A scan is still running (started at `since`). */
  | { kind: "waiting"; since: number };

/** Thrown by DirWatch.exclusive when its caller gave up while waiting for its turn. */
export class AbortedError extends Error {
  override name = "AbortedError";
}

function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(new AbortedError("cancelled"));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new AbortedError("cancelled"));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}

/**
 * The only way to the file system behind one directory (datadir on a file
 * server, cachedir on the local SSD): one operation at a time, in order, so
 * that a hung server holds at most one child process and never the
 * daemon's own threads. Scans are never queued behind a scan: while one is
 * outstanding, a tick sees it "waiting" (ScanView), however long that lasts.
 */
export class DirWatch<T> {
  /** One operation at a time, in the order asked (p-limit). */
  private readonly queue = pLimit(1);
  private scan?: { since: number; done: Promise<void>; generation: number };
  /** The outcome of a scan that finished after its tick stopped waiting for it; the next tick takes it. */
  private unread?: { view: ScanView<T>; generation: number };
  /** Bumped by invalidate(): a scan started before is out of date. */
  private generation = 0;

  constructor(
    readonly dir: string,
    private readonly clock: Clock = systemClock,
  ) {}

  /** Run `op` once every operation queued before it has settled. A caller that aborts stops waiting (the operation, if started, runs on). */
  exclusive<R>(op: () => Promise<R>, signal?: AbortSignal): Promise<R> {
    const result = this.queue(() => {
      if (signal?.aborted) throw new AbortedError("cancelled");
      return op();
    });
    // A caller that stopped waiting (aborted) no longer handles the result: its failure must not go unhandled.
    result.catch(() => undefined);
    return abortable(result, signal);
  }

  /**
   * The daemon has just changed the directory (a copy renamed into place,
   * files deleted): a scan started before may have missed it, and is not
   * to be believed. The next poll waits for a scan started afterwards.
   */
  invalidate(): void {
    this.generation++;
  }

  /** An operation (a scan) is running or queued. */
  get busySince(): number | undefined {
    return this.scan?.since;
  }

  /**
   * This tick's view of the directory: start a scan unless one is
   * outstanding, and wait for it at most `waitMs` (or until `signal`).
   * A scan that ends later is kept for the next tick, which sees it fresh.
   */
  async poll(job: (signal?: AbortSignal) => Promise<T>, waitMs: number, signal?: AbortSignal): Promise<ScanView<T>> {
    const deadline = this.clock.monotonic() + waitMs;
    for (;;) {
      // A scan started before the last invalidate() is thrown away, and another started.
      if (this.unread && this.unread.generation !== this.generation) this.unread = undefined;
      if (this.unread) {
        const view = this.unread.view;
        this.unread = undefined;
        return view;
      }
      if (!this.scan) this.start(job, signal);
      const scan = this.scan as NonNullable<typeof this.scan>;
      const remaining = deadline - this.clock.monotonic();
      if (remaining <= 0 || signal?.aborted) return { kind: "waiting", since: scan.since };
      let stopWaiting = () => {};
      const timeout = new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, remaining);
        stopWaiting = () => {
          clearTimeout(timer);
          resolve();
        };
        signal?.addEventListener("abort", stopWaiting, { once: true });
      });
      await Promise.race([scan.done, timeout]);
      signal?.removeEventListener("abort", stopWaiting);
      stopWaiting();
      if (!this.unread) return { kind: "waiting", since: scan.since };
    }
  }

  /** Start a scan; it runs on when its tick stops waiting, but not past the daemon's end (`signal`). */
  private start(job: (signal?: AbortSignal) => Promise<T>, signal?: AbortSignal): void {
    const since = this.clock.now();
    const generation = this.generation;
    const done = this.exclusive(() => job(signal)).then(
      (result): ScanView<T> => ({ kind: "fresh", result, at: this.clock.now() }),
      (err: unknown): ScanView<T> => {
        const e = err instanceof ScanError ? err : new ScanError("EIO", err instanceof Error ? err.message : String(err));
        return { kind: "failed", code: e.code, message: e.message, timedOut: e.timedOut, at: this.clock.now() };
      },
    );
    this.scan = {
      since,
      generation,
      done: done.then((view) => {
        this.unread = { view, generation };
        this.scan = undefined;
      }),
    };
  }
}

import { execFile } from "node:child_process";
import { systemClock } from "./clock.js";

/**
 * The one place that starts programs. Always execFile with an argument array
 * (never a shell, so "$(reboot).sqfs" is just a file name) and a timeout (so a
 * hung mount on a dead NFS server cannot stop the loop).
 */

export interface RunOptions {
  timeoutMs: number;
  signal?: AbortSignal;
  /**
   * How stdout is decoded: utf8 (the default) or latin1, one character per
   * byte, for binary output (Buffer.from(stdout, "latin1") gives the bytes).
   */
  encoding?: "utf8" | "latin1";
  /** Written to the program's standard input, which is then closed (a record written into datadir by a child). */
  input?: string;
  /** Added to the environment (SLURM_TIME_FORMAT for squeue). */
  env?: Record<string, string>;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  ms: number;
}

export type Runner = (file: string, args: readonly string[], options: RunOptions) => Promise<RunResult>;

const STDERR_TAIL = 2000;

/**
 * After SIGKILL, how long to wait for the child to be gone before giving up
 * on it. A process blocked in the kernel on a dead file server (a FUSE
 * request already read by its daemon, some NFS paths) does not die until the
 * server answers; the caller must not wait with it.
 */
export const ABANDON_AFTER_KILL_MS = 2000;

export class CommandFailedError extends Error {
  override name = "CommandFailedError";
  /** What the program printed before it failed (find lists what it could before complaining). */
  stdout = "";
  constructor(
    readonly argv: readonly string[],
    readonly exitCode: number | null,
    readonly signal: string | null,
    readonly stderr: string,
    readonly ms: number,
    readonly timedOut: boolean,
    readonly aborted: boolean,
    /** Killed, but still not gone: stuck in the kernel; left behind, detached from the daemon. */
    readonly abandoned = false,
  ) {
    const why = aborted ? "was cancelled" : timedOut ? `timed out after ${ms} ms` : signal ? `was killed by ${signal}` : `exited with status ${exitCode}`;
    const tail = stderr.trim().split("\n").slice(-3).join(" | ");
    super(`${argv.join(" ")} ${why}${abandoned ? " (still stuck in the kernel after SIGKILL; left behind)" : ""}${tail ? `: ${tail}` : ""}`);
  }
}

export const run: Runner = (file, args, options) => {
  const started = systemClock.monotonic();
  const argv = [file, ...args];
  return new Promise((resolve, reject) => {
    let settled = false;
    let abandonTimer: NodeJS.Timeout | undefined;
    const child = execFile(
      file,
      [...args],
      {
        timeout: options.timeoutMs,
        killSignal: "SIGKILL",
        signal: options.signal,
        maxBuffer: 64 * 1024 * 1024,
        encoding: options.encoding ?? "utf8",
        // Fixed locale: error texts are parsed (observe/scan.ts) and read by admins in one language.
        env: { ...process.env, ...options.env, LC_ALL: "C" },
      },
      (error, stdout, stderr) => {
        clearTimeout(abandonTimer);
        options.signal?.removeEventListener("abort", onAbort);
        if (settled) return;
        settled = true;
        const ms = Math.round(systemClock.monotonic() - started);
        if (!error) {
          resolve({ stdout, stderr, ms });
          return;
        }
        const e = error as NodeJS.ErrnoException & { killed?: boolean; signal?: NodeJS.Signals | null; code?: number | string | null };
        const aborted = options.signal?.aborted === true;
        // On abort execFile reports at once, while the child it killed may still be stuck: let it go.
        if (aborted) detach();
        const timedOut = !aborted && e.killed === true && ms >= options.timeoutMs;
        const exitCode = typeof e.code === "number" ? e.code : null;
        const spawnError = typeof e.code === "string" ? `${e.code}: ${e.message}` : "";
        const failure = new CommandFailedError(argv, exitCode, e.signal ?? null, `${stderr}${spawnError}`.slice(-STDERR_TAIL), ms, timedOut, aborted);
        failure.stdout = stdout;
        reject(failure);
      },
    );
    if (options.input !== undefined) {
      // A child that exits without reading (a failed mkdir) closes the pipe: EPIPE is its failure, reported by its status.
      child.stdin?.on("error", () => undefined);
      child.stdin?.end(options.input);
    }
    // execFile kills the child on timeout or abort, but reports only once it
    // is gone. Give up on one that stays: detach it (no handle of it keeps the
    // daemon's event loop alive, so the daemon can still exit) and reject.
    function detach(): void {
      child.unref();
      for (const stream of [child.stdin, child.stdout, child.stderr]) stream?.destroy();
    }
    const abandon = (timedOut: boolean) => {
      if (settled) return;
      settled = true;
      options.signal?.removeEventListener("abort", onAbort);
      detach();
      const ms = Math.round(systemClock.monotonic() - started);
      reject(new CommandFailedError(argv, null, "SIGKILL", "", ms, timedOut, !timedOut, true));
    };
    const armAbandon = (afterMs: number, timedOut: boolean) => {
      clearTimeout(abandonTimer);
      abandonTimer = setTimeout(() => abandon(timedOut), afterMs);
      abandonTimer.unref();
    };
    function onAbort(): void {
      armAbandon(ABANDON_AFTER_KILL_MS, false);
    }
    if (options.signal?.aborted) onAbort();
    else options.signal?.addEventListener("abort", onAbort, { once: true });
    armAbandon(options.timeoutMs + ABANDON_AFTER_KILL_MS, true);
  });
};

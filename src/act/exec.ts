import { execFile } from "node:child_process";

/**
 * The one place that starts programs. Always execFile with an argument array
 * (never a shell, so "$(reboot).sqfs" is just a file name) and a timeout (so a
 * hung mount on a dead NFS server cannot stop the loop).
 */

export interface RunOptions {
  timeoutMs: number;
  signal?: AbortSignal;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  ms: number;
}

export type Runner = (file: string, args: readonly string[], options: RunOptions) => Promise<RunResult>;

const STDERR_TAIL = 2000;

export class CommandFailedError extends Error {
  override name = "CommandFailedError";
  constructor(
    readonly argv: readonly string[],
    readonly exitCode: number | null,
    readonly signal: string | null,
    readonly stderr: string,
    readonly ms: number,
    readonly timedOut: boolean,
    readonly aborted: boolean,
  ) {
    const why = aborted ? "was cancelled" : timedOut ? `timed out after ${ms} ms` : signal ? `was killed by ${signal}` : `exited with status ${exitCode}`;
    const tail = stderr.trim().split("\n").slice(-3).join(" | ");
    super(`${argv.join(" ")} ${why}${tail ? `: ${tail}` : ""}`);
  }
}

export const run: Runner = (file, args, options) => {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    execFile(
      file,
      [...args],
      {
        timeout: options.timeoutMs,
        killSignal: "SIGKILL",
        signal: options.signal,
        maxBuffer: 16 * 1024 * 1024,
        encoding: "utf8",
        // Fixed locale: error texts are parsed by nobody but read by admins in one language.
        env: { ...process.env, LC_ALL: "C" },
      },
      (error, stdout, stderr) => {
        const ms = Math.round(performance.now() - started);
        if (!error) {
          resolve({ stdout, stderr, ms });
          return;
        }
        const e = error as NodeJS.ErrnoException & { killed?: boolean; signal?: NodeJS.Signals | null; code?: number | string | null };
        const aborted = options.signal?.aborted === true;
        const timedOut = !aborted && e.killed === true && ms >= options.timeoutMs;
        const exitCode = typeof e.code === "number" ? e.code : null;
        const spawnError = typeof e.code === "string" ? `${e.code}: ${e.message}` : "";
        reject(new CommandFailedError([file, ...args], exitCode, e.signal ?? null, `${stderr}${spawnError}`.slice(-STDERR_TAIL), ms, timedOut, aborted));
      },
    );
  });
};

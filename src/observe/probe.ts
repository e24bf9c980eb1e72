/**
 * Reading the cache device itself, not the page cache: one block of a
 * cached copy (through its loop device when it is mounted) with O_DIRECT, in
 * a child with a deadline. A drive that returns read errors answers EIO
 * here even while every page read so far is still in memory. Background
 * work: the tick never waits for a probe (CacheProbe).
 */
import type { Clock } from "../lib/clock.js";
import { CommandFailedError, type Runner } from "../lib/exec.js";
import { parseErrorLine } from "./scan.js";

/** What to read: a loop device (/dev/loopN) or a file, of `sizeBytes`. */
export interface ProbeTarget {
  dataset: string;
  path: string;
  sizeBytes: number;
}

export type ProbeResult = { target: ProbeTarget; ok: true } | { target: ProbeTarget; ok: false; code: string; message: string; timedOut: boolean };

/** One round of probes, as the next tick takes it. */
export interface ProbeRound {
  at: number;
  results: ProbeResult[];
}

const BLOCK = 4096;

/** Reads one block of `target` at `offset` (rounded down to a block) with O_DIRECT; where O_DIRECT is refused (tmpfs: EINVAL), without. */
export async function probeRead(run: Runner, target: ProbeTarget, offset: number, timeoutMs: number, signal?: AbortSignal): Promise<ProbeResult> {
  const skip = Math.max(0, Math.floor(Math.min(offset, target.sizeBytes - BLOCK) / BLOCK));
  const dd = (direct: boolean) => run("dd", [`if=${target.path}`, "of=/dev/null", `bs=${BLOCK}`, "count=1", `skip=${skip}`, ...(direct ? ["iflag=direct"] : []), "status=none"], { timeoutMs, signal });
  try {
    try {
      await dd(true);
    } catch (err) {
      if (err instanceof CommandFailedError && !err.timedOut && /Invalid argument/.test(err.stderr)) await dd(false);
      else throw err;
    }
    return { target, ok: true };
  } catch (err) {
    if (err instanceof CommandFailedError) {
      if (err.timedOut || err.abandoned) return { target, ok: false, code: "ETIMEDOUT", message: `${target.path}: no answer in ${Math.round(timeoutMs / 1000)} s`, timedOut: true };
      const line = err.stderr.split("\n").find((l) => l.trim() !== "") ?? "";
      const e = parseErrorLine(line);
      return { target, ok: false, code: e.code, message: `${target.path}: ${e.text}`, timedOut: false };
    }
    return { target, ok: false, code: "EIO", message: `${target.path}: ${err instanceof Error ? err.message : String(err)}`, timedOut: false };
  }
}

/**
 * Probes a few cached copies every `everyMs`, in the background, round
 * robin; the tick hands it its targets and takes the last finished round.
 * At most `perRound` reads a round: at 1,000 cached datasets a copy is read
 * every few minutes, and the device (one for all of them) every round.
 */
export class CacheProbe {
  private cursor = 0;
  private startedAt = -Infinity;
  private running = false;
  private finished?: ProbeRound;

  constructor(
    private readonly run: Runner,
    private readonly clock: Clock,
    private readonly options: { everyMs: number; perRound: number; timeoutMs: () => number; lifetime?: AbortSignal },
  ) {}

  /** Starts a round if one is due and none runs. */
  kick(targets: readonly ProbeTarget[]): void {
    const now = this.clock.monotonic();
    if (this.running || targets.length === 0 || now - this.startedAt < this.options.everyMs) return;
    this.startedAt = now;
    this.running = true;
    const picked = Array.from({ length: Math.min(this.options.perRound, targets.length) }, (_, i) => targets[(this.cursor + i) % targets.length] as ProbeTarget);
    const round = this.cursor++;
    void (async () => {
      const results: ProbeResult[] = [];
      for (const [i, t] of picked.entries()) {
        // Spread over the copy: its start, and a different place each round.
        const offset = ((round + i) * 7919 * BLOCK) % Math.max(BLOCK, t.sizeBytes);
        results.push(await probeRead(this.run, t, offset, this.options.timeoutMs(), this.options.lifetime));
      }
      this.finished = { at: this.clock.now(), results };
      this.running = false;
    })();
  }

  /** The last round finished since the previous call, if any. */
  take(): ProbeRound | undefined {
    const round = this.finished;
    this.finished = undefined;
    return round;
  }
}

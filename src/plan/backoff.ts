/**
 * Back-off: after a failure a dataset is left alone for interval x
 * 2^failures (at most an hour) instead of being retried every tick or
 * blacklisted for ever. Pure: the caller passes the time.
 */
import { actionDataset, type Action } from "./diff.js";

/** The longest a dataset is left alone after failures. */
export const MAX_BACKOFF_MS = 3600 * 1000;

export interface BackoffEntry {
  failures: number;
  /** Until when (ms since the epoch) the dataset is left alone. */
  until: number;
}

export class Backoff {
  private readonly entries = new Map<string, BackoffEntry>();

  /** One more failure of `name` at `now`: how long it is now left alone. */
  fail(name: string, now: number, intervalMs: number): BackoffEntry & { delayMs: number } {
    const failures = (this.entries.get(name)?.failures ?? 0) + 1;
    const delayMs = Math.min(intervalMs * 2 ** failures, MAX_BACKOFF_MS);
    const entry = { failures, until: now + delayMs };
    this.entries.set(name, entry);
    return { ...entry, delayMs };
  }

  succeeded(name: string): void {
    this.entries.delete(name);
  }

  /** Everything is retried at once (the file server is back: what failed, failed because of it). */
  clear(): void {
    this.entries.clear();
  }

  /**
   * After acting: the datasets of failed actions back off; those whose
   * actions were done are forgiven, but for a copy started (it may still fail).
   * @returns the datasets that failed, with their new back-off.
   */
  afterActing(done: Iterable<Action>, failed: Iterable<Action>, now: number, intervalMs: number): { name: string; entry: BackoffEntry & { delayMs: number } }[] {
    const failedNames = new Set([...failed].map(actionDataset).filter((n): n is string => n !== undefined));
    const out = [...failedNames].map((name) => ({ name, entry: this.fail(name, now, intervalMs) }));
    for (const a of done) {
      const name = actionDataset(a);
      if (name !== undefined && !failedNames.has(name) && a.kind !== "start-copy") this.entries.delete(name);
    }
    return out;
  }

  /** Datasets left alone at `now`: the diff does not touch them. */
  frozen(now: number): Set<string> {
    return new Set([...this.entries].filter(([, b]) => b.until > now).map(([name]) => name));
  }

  /** The status's note for `name`, while it is left alone. */
  note(name: string, now: number): string | undefined {
    const b = this.entries.get(name);
    return b && b.until > now ? `retrying after ${b.failures} failure(s) at ${new Date(b.until).toISOString()}` : undefined;
  }

  /** The first end of a back-off after `now` (Infinity: none). */
  nextEnd(now: number): number {
    let next = Infinity;
    for (const b of this.entries.values()) if (b.until > now) next = Math.min(next, b.until);
    return next;
  }
}

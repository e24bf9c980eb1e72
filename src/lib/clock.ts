import { setTimeout as delay } from "node:timers/promises";

/**
 * The one source of time. Everything that reads the time takes a Clock, so
 * that tests can set it and no code mixes an injected "now" with the real
 * one. Lint forbids Date.now(), new Date() and performance.now() elsewhere.
 */
export interface Clock {
  /** Wall time, ms since the epoch: what is compared with other nodes, with files' times, or shown to people. */
  now(): number;
  /** Monotonic ms from an arbitrary origin: durations and deadlines, which must not step with NTP. */
  monotonic(): number;
  /** Resolves after `ms`, or at once when `signal` aborts; never rejects. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

/** Resolves after `ms` or when `signal` aborts (node:timers/promises removes its listener either way). */
export async function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  await delay(ms, undefined, { signal }).catch(() => undefined);
}

export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
  sleep,
};

/** A clock whose wall time is `now()` and whose other parts are the system's: for a command told what time it is. */
export function clockAt(now: () => number): Clock {
  return { ...systemClock, now };
}

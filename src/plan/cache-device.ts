/**
 * Whether the cache device can be trusted: told apart from a cachedir that
 * is only slow or briefly unreadable (plan/availability.ts, NotResponding,
 * IOError). The evidence is the probes' reads of cached copies, which go to
 * the device (observe/probe.ts): a read error there means new opens through
 * the cache would fail, so the cache overmounts are taken off and jobs read
 * the slow tier beneath. Pure.
 */
import type { ProbeRound } from "../observe/probe.js";

/**
 * Errors of a device, not of a slow one. Not ENXIO: a loop device detached
 * between the plan and the probe (a copy dropped) answers that.
 */
const DEVICE_ERRORS = new Set(["EIO", "ENODEV", "EBADMSG", "EUCLEAN", "EREMOTEIO"]);

/** Clean rounds in a row after which a failing device is trusted again (without a reload). */
export const RECOVERY_ROUNDS = 3;

export interface CacheDeviceCondition {
  up: boolean;
  /** "Working", or "CacheDeviceFailing" (a probe's read of it failed with a device error). */
  reason: "Working" | "CacheDeviceFailing";
  /** The evidence: which copy or device, and which error. */
  message: string;
  /** When `up` last changed (ms since the epoch). */
  since: number;
  /** Clean rounds in a row while failing (RECOVERY_ROUNDS). */
  cleanRounds: number;
}

export function workingDevice(now: number): CacheDeviceCondition {
  return { up: true, reason: "Working", message: "", since: now, cleanRounds: 0 };
}

/** The condition after a round of probes (none: unchanged). */
export function assessCacheDevice(previous: CacheDeviceCondition, round: ProbeRound | undefined): CacheDeviceCondition {
  if (!round) return previous;
  const failed = round.results.find((r) => !r.ok && DEVICE_ERRORS.has(r.code));
  if (failed && !failed.ok) {
    return previous.up ? { up: false, reason: "CacheDeviceFailing", message: `probe read of ${failed.message} (${failed.code})`, since: round.at, cleanRounds: 0 } : { ...previous, cleanRounds: 0 };
  }
  if (previous.up) return previous;
  // A timeout is no evidence either way (a slow device is NotResponding's).
  const clean = round.results.length > 0 && round.results.every((r) => r.ok);
  if (!clean) return previous;
  const cleanRounds = previous.cleanRounds + 1;
  return cleanRounds >= RECOVERY_ROUNDS ? workingDevice(round.at) : { ...previous, cleanRounds };
}

/**
 * Whether the cache device can be trusted: told apart from a cachedir that
 * is only slow or briefly unreadable (plan/availability.ts, NotResponding,
 * IOError). The evidence is the probes' reads of cached copies, which go to
 * the device (observe/probe.ts): a read error there means new opens through
 * the cache would fail, so the cache overmounts are taken off and jobs read
 * the slow tier beneath. Pure.
 */
import type { ProbeRound } from "../observe/probe.js";
import type { ReadOnlyCache } from "../observe/snapshot.js";
import type { KernelIoError } from "../observe/kernel-log.js";

/**
 * Errors of a device, not of a slow one. Not ENXIO: a loop device detached
 * between the plan and the probe (a copy dropped) answers that.
 */
const DEVICE_ERRORS = new Set(["EIO", "ENODEV", "EBADMSG", "EUCLEAN", "EREMOTEIO"]);

/** Clean rounds in a row after which a failing device is trusted again (without a reload). */
export const RECOVERY_ROUNDS = 3;

export interface CacheDeviceCondition {
  /** Reads of the cache device succeed (true also while it is ReadOnly: its copies are still served). */
  up: boolean;
  /**
   * "Working"; "CacheDeviceFailing" (a probe's read of it failed with a
   * device error: its overmounts come off); "ReadOnly" (its file system
   * cannot be written: the copies stay served, nothing is copied or deleted).
   */
  reason: "Working" | "CacheDeviceFailing" | "ReadOnly";
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

/**
 * The condition after a round of probes (none: unchanged), the kernel's
 * read errors on the cache's devices (observe/kernel-log.ts), and with
 * cachedir's file system read-only or not.
 */
export function assessCacheDevice(previous: CacheDeviceCondition, round: ProbeRound | undefined, readOnly?: ReadOnlyCache, now = round?.at ?? previous.since, kernel?: KernelIoError): CacheDeviceCondition {
  const probed = kernel ? (previous.up ? { up: false, reason: "CacheDeviceFailing" as const, message: `kernel: ${kernel.text}`, since: now, cleanRounds: 0 } : { ...previous, cleanRounds: 0 }) : assessProbes(previous, round);
  if (!probed.up) return probed;
  if (readOnly) return probed.reason === "ReadOnly" ? probed : { up: true, reason: "ReadOnly", message: `${readOnly.source} is mounted read-only at ${readOnly.mountPoint}`, since: now, cleanRounds: 0 };
  return probed.reason === "ReadOnly" ? workingDevice(now) : probed;
}

function assessProbes(previous: CacheDeviceCondition, round: ProbeRound | undefined): CacheDeviceCondition {
  if (!round) return previous;
  const results = round.results.filter((r) => r.target.tier === "cache");
  const failed = results.find((r) => !r.ok && DEVICE_ERRORS.has(r.code));
  if (failed && !failed.ok) {
    return previous.up ? { up: false, reason: "CacheDeviceFailing", message: `probe read of ${failed.message} (${failed.code})`, since: round.at, cleanRounds: 0 } : { ...previous, cleanRounds: 0 };
  }
  if (previous.up) return previous;
  // A timeout is no evidence either way (a slow device is NotResponding's).
  const clean = results.length > 0 && results.every((r) => r.ok);
  if (!clean) return previous;
  const cleanRounds = previous.cleanRounds + 1;
  return cleanRounds >= RECOVERY_ROUNDS ? workingDevice(round.at) : { ...previous, cleanRounds };
}

/**
 * Builders shared by the unit tests: minimal Config, Snapshot, Dataset and
 * Layer objects, a seeded PRNG, temporary directories, and an assertion for
 * one-line UsageErrors. Not a test file itself (node --test only runs
 * *.test.js when given a directory).
 */
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Config } from "../../src/config.js";
import { UsageError } from "../../src/errors.js";
import type { FileEntry, Probe } from "../../src/observe/images.js";
import type { LoopDevice } from "../../src/observe/loops.js";
import type { MountEntry } from "../../src/observe/mountinfo.js";
import type { Snapshot } from "../../src/observe/snapshot.js";
import type { Catalog, Dataset } from "../../src/plan/catalog.js";
import type { Layer } from "../../src/plan/layers.js";

export const DATA = "/srv/data";
export const CACHE = "/ssd/cache";
export const MNT = "/mnt/ds";

export const KiB = 1024;
export const MiB = 1024 ** 2;
export const GiB = 1024 ** 3;
export const TiB = 1024 ** 4;

/** test/fixtures, from build/test/unit/<file>.js (tsc does not copy fixtures). */
export const FIXTURES = fileURLToPath(new URL("../../../test/fixtures/", import.meta.url));

export function makeConfig(over: Partial<Config> = {}): Config {
  return {
    datadir: DATA,
    cachedir: CACHE,
    mountdir: MNT,
    capacity: { kind: "bytes", bytes: 100 * GiB },
    period: 1200,
    interval: 5,
    naming: "first-dot",
    commandTimeout: 60,
    scanTimeout: 30,
    vanishShare: 0.5,
    rescanInterval: 1800,
    pins: [],
    stateDir: "/var/lib/scratch_manager",
    runtimeDir: "/run/scratch_manager",
    maxIdle: 0,
    keepFree: { kind: "bytes", bytes: 0 },
    copyBwlimit: 0,
    maxCopies: 2,
    policy: "adaptive",
    logFormat: "json",
    peerUploads: 4,
    peerDirOwner: 0,
    slurmStage: "no",
    verbose: false,
    ...over,
  };
}

export interface EntryOptions {
  size?: number;
  mtimeMs?: number;
  ino?: number;
  type?: FileEntry["type"];
}

let nextIno = 1000;

export function fileEntry(dir: string, file: string, o: EntryOptions = {}): FileEntry {
  return {
    file,
    path: path.join(dir, file),
    type: o.type ?? "file",
    size: o.size ?? 4096,
    mtimeMs: o.mtimeMs ?? 0,
    ino: o.ino ?? nextIno++,
  };
}

export function snapshot(over: Partial<Snapshot> = {}): Snapshot {
  return {
    now: 0,
    images: [],
    probes: new Map<string, Probe>(),
    cacheFiles: [],
    mounts: [],
    loops: new Map<string, LoopDevice>(),
    readBytes: new Map<string, number>(),
    cacheFs: { totalBytes: 1000 * GiB, freeBytes: 500 * GiB },
    ...over,
  };
}

export function loopDevice(name: string, backingFile: string, o: { deleted?: boolean; sizeBytes?: number; majorMinor?: string } = {}): LoopDevice {
  const n = Number(name.replace(/^loop/, ""));
  return { name, majorMinor: o.majorMinor ?? `7:${n}`, backingFile, deleted: o.deleted ?? false, sizeBytes: o.sizeBytes ?? 0 };
}

export function mountEntry(mountId: number, parentId: number, mountPoint: string, o: Partial<MountEntry> = {}): MountEntry {
  return { mountId, parentId, majorMinor: "0:99", mountPoint, options: "ro,nosuid,nodev", fsType: "squashfs", source: "/dev/loop0", ...o };
}

export function dataset(name: string, o: Partial<Dataset> = {}): Dataset {
  const imageFile = o.imageFile ?? `${name}.sqfs`;
  return {
    name,
    imageFile,
    imagePath: path.join(DATA, imageFile),
    kind: "squashfs",
    size: 10 * GiB,
    mtimeMs: 1_700_000_000_000,
    mountPoint: path.join(MNT, name),
    cachePath: path.join(CACHE, imageFile),
    tmpPath: path.join(CACHE, `.scratch_manager.${imageFile}.partial`),
    cache: "none",
    ...o,
  };
}

export function catalogOf(datasets: Dataset[], o: Partial<Catalog> = {}): Catalog {
  return {
    datasets: new Map(datasets.map((d) => [d.name, d])),
    pending: new Set<string>(),
    pendingFiles: new Set<string>(),
    refusals: [],
    nameOfFile: new Map(datasets.map((d) => [d.imageFile, d.name])),
    ...o,
  };
}

function layer(tier: Layer["tier"], mountId: number, backingFile: string | undefined, deleted: boolean): Layer {
  const entry = mountEntry(mountId, mountId - 1, "/unused");
  return backingFile === undefined ? { mountId, tier, deleted, entry } : { mountId, tier, backingFile, deleted, entry };
}

export const slowLayer = (mountId: number, imageFile: string, deleted = false): Layer => layer("slow", mountId, path.join(DATA, imageFile), deleted);
export const cacheLayer = (mountId: number, imageFile: string, deleted = false): Layer => layer("cache", mountId, path.join(CACHE, imageFile), deleted);
export const foreignLayer = (mountId: number): Layer => layer("foreign", mountId, undefined, false);

/** mulberry32: a small seeded PRNG, so that random cases are the same on every run. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Integer in [lo, hi]. */
export function randInt(rand: () => number, lo: number, hi: number): number {
  return lo + Math.floor(rand() * (hi - lo + 1));
}

export async function tempDir(prefix = "sm-unit-"): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

function checkUsageError(caught: unknown, mentions: readonly (string | RegExp)[]): UsageError {
  assert.ok(caught instanceof UsageError, `expected a UsageError, got ${String(caught)}`);
  assert.equal(caught.exitCode, 2, "a usage error exits with status 2");
  assert.ok(!caught.message.includes("\n"), `a usage error is one line: ${JSON.stringify(caught.message)}`);
  for (const m of mentions) {
    if (typeof m === "string") assert.ok(caught.message.includes(m), `message ${JSON.stringify(caught.message)} should mention ${JSON.stringify(m)}`);
    else assert.match(caught.message, m);
  }
  return caught;
}

/** fn must throw a one-line UsageError (exit status 2) whose message mentions each of `mentions`. */
export function assertUsageError(fn: () => unknown, ...mentions: (string | RegExp)[]): UsageError {
  try {
    fn();
  } catch (err) {
    return checkUsageError(err, mentions);
  }
  assert.fail(`expected a UsageError mentioning ${mentions.map(String).join(", ")}; nothing was thrown`);
}

export async function assertRejectsUsage(promise: Promise<unknown>, ...mentions: (string | RegExp)[]): Promise<UsageError> {
  try {
    await promise;
  } catch (err) {
    return checkUsageError(err, mentions);
  }
  assert.fail(`expected a UsageError mentioning ${mentions.map(String).join(", ")}; the promise resolved`);
}

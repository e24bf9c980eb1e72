/**
 * reconcile (plan/reconcile.ts), driven with made-up observations: what a
 * tick plans and reports is a function of its arguments, and a quiet tick is
 * the last plan kept while nothing changes. The daemon running it on real
 * mounts is tested in test/integration/.
 */
import assert from "node:assert/strict";
import path from "node:path";
import { describe, test } from "node:test";
import type { Observation } from "../../src/observe/snapshot.js";
import type { FileEntry } from "../../src/observe/images.js";
import type { LoopDevice } from "../../src/observe/loops.js";
import type { MountEntry } from "../../src/observe/mountinfo.js";
import type { ScanView } from "../../src/observe/dir-watch.js";
import type { DataScan } from "../../src/observe/snapshot.js";
import { Backoff } from "../../src/plan/backoff.js";
import type { CopyView } from "../../src/plan/diff.js";
import { reconcile, type Memory, type Reconciled, type ReconcileInput } from "../../src/plan/reconcile.js";
import { Stats } from "../../src/plan/stats.js";
import { Storage } from "../../src/plan/storage.js";
import { workingDevice } from "../../src/plan/cache-device.js";
import { noDeadLayers } from "../../src/plan/slow-layers.js";
import type { CacheTarget, ProbeRound, SlowTarget } from "../../src/observe/probe.js";
import { CACHE, DATA, GiB, MNT, MiB, fileEntry, loopDevice, makeConfig, mountEntry } from "./helpers.js";

const config = makeConfig({ interval: 5, period: 60 });
const T0 = Date.UTC(2030, 0, 1);

function freshMemory(): Memory {
  return { storage: new Storage(config, T0), stats: new Stats(config.period * 1000), backoff: new Backoff(), datasetFiles: new Set(), ticks: 0, quietTicks: 0, configGeneration: 0, ownedDirs: new Set(), evicting: new Set(), cacheDevice: workingDevice(T0), slowLayers: noDeadLayers };
}

interface World {
  now: number;
  images: FileEntry[];
  /** Image files mounted (slow) at mountdir/<name>, with their loop device's read counter. */
  mounted?: { file: string; read: number }[];
  /** datadir's scan this tick: a listing (generation) or a failure. */
  datadir?: { generation: number } | { failed: string };
  /** Image files with a cached copy in cachedir, mounted over their slow mount. */
  cached?: FileEntry[];
  /** The cached copies are mounted over their slow mounts (default). */
  cacheMounted?: boolean;
  probeRound?: ReconcileInput["probeRound"];
  /** cachedir's file system is mounted read-only. */
  readOnly?: boolean;
}

function observe(w: World): ReconcileInput {
  const mounts: MountEntry[] = [];
  const loops = new Map<string, LoopDevice>();
  const readBytes = new Map<string, number>();
  (w.mounted ?? []).forEach(({ file, read }, i) => {
    const loop = loopDevice(`loop${i}`, path.join(DATA, file));
    loops.set(loop.majorMinor, loop);
    readBytes.set(loop.name, read);
    mounts.push(mountEntry(100 + i, 1, path.join(MNT, file.replace(/\..*/, "")), { majorMinor: loop.majorMinor, source: `/dev/${loop.name}` }));
  });
  (w.cacheMounted === false ? [] : (w.cached ?? [])).forEach((entry, i) => {
    const loop = loopDevice(`loop${50 + i}`, entry.path);
    loops.set(loop.majorMinor, loop);
    mounts.push(mountEntry(200 + i, 100, path.join(MNT, entry.file.replace(/\..*/, "")), { majorMinor: loop.majorMinor, source: `/dev/${loop.name}` }));
  });
  const scan = w.datadir ?? { generation: 1 };
  const datadir: ScanView<DataScan> =
    "failed" in scan
      ? { kind: "failed", code: scan.failed, message: `${scan.failed}: input/output error`, timedOut: false, at: w.now }
      : {
          kind: "fresh",
          at: w.now,
          result: {
            listing: { dir: { dev: "0:50", ino: 2, mtimeMs: 0, ctimeMs: 0 }, entries: w.images },
            probes: new Map(w.images.map((e) => [e.file, { ok: true, kind: "squashfs" } as const])),
            realPath: DATA,
            listed: true,
            generation: scan.generation,
          },
        };
  const observation: Observation = {
    now: w.now,
    datadir,
    cachedir: { kind: "fresh", at: w.now, result: { listing: { dir: { dev: "0:60", ino: 2, mtimeMs: 0, ctimeMs: 0 }, entries: w.cached ?? [] }, fs: { totalBytes: 1000 * GiB, freeBytes: 900 * GiB }, generation: 1 } },
    mounts,
    loops,
    readBytes,
    cacheReadOnly: w.readOnly === true ? { mountPoint: CACHE, source: "/dev/vdb" } : undefined,
  };
  return { observation, pins: new Map(), copiesAtScan: new Map(), copies: new Map(), counters: { started: 0, finished: 0, failed: 0, cancelled: 0, bytes: 0 }, pid: 42, probeRound: w.probeRound };
}

const alpha = fileEntry(DATA, "alpha.sqfs", { size: 10 * MiB, mtimeMs: T0 - 3600_000, ino: 7 });

/** Runs `worlds` one tick each from a fresh memory. */
function run(worlds: World[]) {
  let memory = freshMemory();
  return worlds.map((w) => {
    const out = reconcile(observe(w), memory, config, w.now);
    memory = out.memory;
    return out;
  });
}

test("a new image: its mount point made and its slow mount planned, and the report says slow", () => {
  const [out] = run([{ now: T0, images: [alpha] }]);
  assert.ok(out);
  assert.deepEqual(
    out.actions.map((a) => a.kind + ":" + ("target" in a ? a.target : "path" in a ? a.path : "")),
    [`mkdir:${path.join(MNT, "alpha")}`, `mount:${path.join(MNT, "alpha")}`],
  );
  const mount = out.actions.find((a) => a.kind === "mount");
  assert.ok(mount?.kind === "mount" && mount.tier === "slow" && mount.source === alpha.path);
  assert.deepEqual(out.report.datasets.map((d) => [d.name, d.state]), [["alpha", "slow"]]);
  assert.equal(out.quiet, false);
  assert.equal(out.report.tick.count, 1);
  assert.equal(out.report.pid, 42);
});

test("nothing read and nothing changed: the next tick is quiet, the last plan's report renewed", () => {
  const mounted = [{ file: "alpha.sqfs", read: 0 }];
  const outs = run([
    { now: T0, images: [alpha], mounted },
    { now: T0 + 5000, images: [alpha], mounted },
    { now: T0 + 10_000, images: [alpha], mounted },
    { now: T0 + 15_000, images: [alpha], mounted },
  ]);
  // The first tick is not settled: datadir went from Starting to Available.
  assert.deepEqual(outs.map((o) => [o.quiet, o.actions.length]), [[false, 0], [false, 0], [true, 0], [true, 0]]);
  const [, second, , fourth] = outs;
  assert.ok(second && fourth);
  assert.equal(fourth.memory.quietTicks, 2);
  assert.equal(fourth.report.writtenAt, T0 + 15_000);
  assert.equal(fourth.report.tick.count, 4);
  assert.deepEqual(fourth.report.datasets, second.report.datasets);
  assert.equal(fourth.notices, undefined, "a quiet tick has nothing new to tell");
});

test("a read, a new listing or a failing scan ends the quiet run", () => {
  const mounted = [{ file: "alpha.sqfs", read: 0 }];
  const settled: World[] = [
    { now: T0, images: [alpha], mounted },
    { now: T0 + 5000, images: [alpha], mounted },
    { now: T0 + 10_000, images: [alpha], mounted },
  ];
  assert.equal(run(settled).at(-1)?.quiet, true);
  const read = run([...settled, { now: T0 + 15_000, images: [alpha], mounted: [{ file: "alpha.sqfs", read: 50 * MiB }] }]).at(-1);
  assert.equal(read?.quiet, false);
  assert.ok((read?.report.datasets[0]?.slowBytesPerSecond ?? 0) > 0, "the read counts");
  const listed = run([...settled, { now: T0 + 15_000, images: [alpha], mounted, datadir: { generation: 2 } }]).at(-1);
  assert.equal(listed?.quiet, false);
  const failing = run([...settled, { now: T0 + 15_000, images: [], mounted, datadir: { failed: "EIO" } }]).at(-1);
  assert.equal(failing?.quiet, false);
});

test("datadir failing: nothing is unmounted, its condition is in the report, and it is back once a scan is believed", () => {
  const mounted = [{ file: "alpha.sqfs", read: 0 }];
  const outs = run([
    { now: T0, images: [alpha], mounted },
    { now: T0 + 5000, images: [], mounted, datadir: { failed: "EIO" } },
    { now: T0 + 10_000, images: [alpha], mounted, datadir: { generation: 2 } },
  ]);
  const [, failing, back] = outs;
  assert.ok(failing && back);
  assert.deepEqual(failing.actions, [], "a scan that failed is never an empty datadir");
  assert.equal(failing.report.storage?.datadir.reason, "IOError");
  assert.deepEqual(failing.report.datasets.map((d) => d.name), ["alpha"], "the datasets are what was last believed");
  assert.deepEqual(failing.storage.changed.map((c) => c.after.reason), ["IOError"]);
  assert.equal(back.report.storage?.datadir.reason, "Available");
});

test("the same observations give the same actions and reports (no hidden clock or state)", () => {
  const worlds: World[] = [
    { now: T0, images: [alpha] },
    { now: T0 + 5000, images: [alpha], mounted: [{ file: "alpha.sqfs", read: 0 }] },
    { now: T0 + 10_000, images: [alpha], mounted: [{ file: "alpha.sqfs", read: 200 * MiB }] },
    { now: T0 + 15_000, images: [alpha], mounted: [{ file: "alpha.sqfs", read: 900 * MiB }] },
  ];
  const strip = (o: ReturnType<typeof run>[number]) => ({ actions: o.actions, report: o.report, quiet: o.quiet });
  const a = run(worlds).map(strip);
  const b = run(worlds).map(strip);
  assert.deepEqual(a, b);
  // Read hard enough, the policy wants it cached: a copy is started.
  assert.ok(a.at(-1)?.actions.some((x) => x.kind === "start-copy"), JSON.stringify(a.at(-1)?.actions.map((x) => x.kind)));
  assert.equal(CACHE, config.cachedir);
});

test("the cache device failing: the cache overmount comes off, the copy is kept, nothing is copied; the report says so; back after clean probes", () => {
  const copy = fileEntry(CACHE, "alpha.sqfs", { size: alpha.size, mtimeMs: alpha.mtimeMs, ino: 70 });
  const mounted = [{ file: "alpha.sqfs", read: 0 }];
  const target = { tier: "cache" as const, dataset: "alpha", path: "/dev/loop50", sizeBytes: alpha.size };
  const eio = { at: T0 + 5000, results: [{ target, ok: false as const, code: "EIO", message: "/dev/loop50: Input/output error", timedOut: false }] };
  const clean = (at: number) => ({ at, results: [{ target, ok: true as const }] });
  const outs = run([
    { now: T0, images: [alpha], mounted, cached: [copy] },
    { now: T0 + 5000, images: [alpha], mounted, cached: [copy], probeRound: eio },
  ]);
  const [first, failing] = outs;
  assert.ok(first && failing);
  assert.deepEqual(first.probeTargets.filter((t) => t.tier === "cache"), [target], "the probes read the copy through its mounted loop device");
  assert.deepEqual(failing.actions.map((a) => a.kind + (a.kind === "unmount" ? `:${a.tier}` : "")), ["unmount:cache"], "only the overmount comes off: the copy is not deleted, the slow mount stays");
  assert.equal(failing.cacheDeviceChanged?.after.up, false);
  assert.equal(failing.report.cacheDevice?.reason, "CacheDeviceFailing");
  assert.match(failing.report.datasets[0]?.note ?? "", /^served from the slow tier: the cache device is failing \(probe read of \/dev\/loop50: Input\/output error \(EIO\)\)$/);
  // The overmount is gone; the device still fails a while, then reads for three rounds: cached again.
  let memory = failing.memory;
  const step = (w: World) => {
    const out = reconcile(observe(w), memory, config, w.now);
    memory = out.memory;
    return out;
  };
  const kinds = [10_000, 15_000, 20_000].map((dt) => step({ now: T0 + dt, images: [alpha], mounted, cached: [copy], cacheMounted: false, probeRound: clean(T0 + dt) }).actions.map((a) => a.kind + (a.kind === "mount" ? `:${a.tier}` : "")));
  assert.deepEqual(kinds, [[], [], ["mount:cache"]], "nothing copied while failing; the copy mounted again once it reads");
});

describe("a dead slow layer (its reads fail while its image in datadir reads)", () => {
  const mounted = [{ file: "alpha.sqfs", read: 0 }];
  const deadRound = (at: number, target: SlowTarget, code = "EIO", imageOk = true): ProbeRound => ({
    at,
    results: [{ target, image: imageOk ? { ok: true } : { ok: false, code: "ETIMEDOUT", message: "no answer", timedOut: true }, ok: false, code, message: `${target.path}: Input/output error`, timedOut: false }],
  });
  const slowTarget = (out: Reconciled | undefined) => {
    const t = out?.probeTargets.find((x): x is SlowTarget => x.tier === "slow");
    assert.ok(t, "the slow layer is probed");
    return t;
  };

  test("uncached: it is unmounted and the image attached again; said once, counted; a server that does not answer is no evidence", () => {
    const [first] = run([{ now: T0, images: [alpha], mounted }]);
    const t = slowTarget(first);
    assert.deepEqual({ image: t.image, path: t.path, suspectSince: t.suspectSince }, { image: alpha.path, path: "/dev/loop0", suspectSince: undefined });
    // The image did not read either: the server's trouble (availability), not a dead handle.
    const [, timeout] = run([{ now: T0, images: [alpha], mounted }, { now: T0 + 5000, images: [alpha], mounted, probeRound: deadRound(T0 + 5000, t, "EIO", false) }]);
    assert.deepEqual(timeout?.actions, []);
    assert.deepEqual(timeout?.deadLayers, []);
    // ENXIO: the loop device was detached meanwhile: no evidence either.
    const [, detached] = run([{ now: T0, images: [alpha], mounted }, { now: T0 + 5000, images: [alpha], mounted, probeRound: deadRound(T0 + 5000, t, "ENXIO") }]);
    assert.deepEqual(detached?.deadLayers, []);
    const [, dead, after] = run([
      { now: T0, images: [alpha], mounted },
      { now: T0 + 5000, images: [alpha], mounted, probeRound: deadRound(T0 + 5000, t, "ENOTCONN") },
      { now: T0 + 10_000, images: [alpha], mounted },
    ]);
    assert.ok(dead && after);
    assert.deepEqual(dead.actions.map((a) => `${a.kind}:${"tier" in a ? a.tier : ""}`), ["unmount:slow", "mount:slow"]);
    const unmount = dead.actions[0];
    assert.ok(unmount?.kind === "unmount" && /dead file handle/.test(unmount.reason));
    assert.equal(dead.deadLayers.length, 1);
    assert.match(dead.deadLayers[0]?.evidence ?? "", /Input\/output error \(ENOTCONN\) while .*alpha\.sqfs reads/);
    assert.match(dead.report.datasets[0]?.note ?? "", /^slow layer dead/);
    assert.deepEqual(dead.report.slowLayers, { dead: 1, foundTotal: 1 });
    // Forgotten as its unmount is planned: the fresh layer may get the same mount ID and loop device at once.
    assert.equal(dead.memory.slowLayers.dead.size, 0);
    assert.equal(dead.memory.slowLayers.foundTotal, 1);
    assert.deepEqual(after.actions, [], "the layer at that mount ID next tick is the fresh one");
    assert.deepEqual(after.deadLayers, [], "said once");
  });

  test("under a working cache layer: kept (nothing fails), said; attached again in the same step as the cache layer comes off", () => {
    const copy = fileEntry(CACHE, "alpha.sqfs", { size: alpha.size, mtimeMs: alpha.mtimeMs, ino: 70 });
    const t = slowTarget(run([{ now: T0, images: [alpha], mounted, cached: [copy] }])[0]);
    const [, dead] = run([{ now: T0, images: [alpha], mounted, cached: [copy] }, { now: T0 + 5000, images: [alpha], mounted, cached: [copy], probeRound: deadRound(T0 + 5000, t) }]);
    assert.ok(dead);
    assert.deepEqual(dead.actions, [], "the cache layer serves: the stack is not rebuilt");
    assert.match(dead.report.datasets[0]?.note ?? "", /beneath the cache is dead .*attached again when the cache layer comes off/);
    // The cache device then fails: the cache layer comes off, and the dead layer with it, the image attached again.
    const cacheTarget = dead.probeTargets.find((x): x is CacheTarget => x.tier === "cache");
    assert.ok(cacheTarget);
    const failing: ProbeRound = { at: T0 + 10_000, results: [{ target: cacheTarget, ok: false, code: "EIO", message: "/dev/loop50: Input/output error", timedOut: false }] };
    const out = reconcile(observe({ now: T0 + 10_000, images: [alpha], mounted, cached: [copy], probeRound: failing }), dead.memory, config, T0 + 10_000);
    assert.deepEqual(out.actions.map((a) => `${a.kind}:${"tier" in a ? a.tier : ""}`), ["unmount:cache", "unmount:slow", "mount:slow"]);
  });

  test("the other layers of its file system become suspect (probed first); so does every layer when datadir comes back", () => {
    const two = [...mounted, { file: "beta.sqfs", read: 0 }];
    const beta = fileEntry(DATA, "beta.sqfs", { size: 10 * MiB, mtimeMs: T0 - 3600_000, ino: 8 });
    const t = slowTarget(run([{ now: T0, images: [alpha, beta], mounted: two }])[0]);
    const [, dead] = run([{ now: T0, images: [alpha, beta], mounted: two }, { now: T0 + 5000, images: [alpha, beta], mounted: two, probeRound: deadRound(T0 + 5000, t) }]);
    const others = dead?.probeTargets.filter((x): x is SlowTarget => x.tier === "slow") ?? [];
    assert.deepEqual(others.map((x) => [x.dataset, x.suspectSince]), [["beta", T0 + 5000]]);
    const [, , back] = run([
      { now: T0, images: [alpha, beta], mounted: two },
      { now: T0 + 5000, images: [alpha, beta], mounted: two, datadir: { failed: "EIO" } },
      { now: T0 + 10_000, images: [alpha, beta], mounted: two, datadir: { generation: 2 } },
    ]);
    assert.deepEqual(back?.probeTargets.filter((x): x is SlowTarget => x.tier === "slow").map((x) => x.suspectSince), [T0 + 10_000, T0 + 10_000], "a new suspicion: each read again");
  });
});

test("the cache file system read-only: the cached copy stays mounted, a copy running is cancelled, none started, nothing deleted; the report says ReadOnly", () => {
  const copy = fileEntry(CACHE, "alpha.sqfs", { size: alpha.size, mtimeMs: alpha.mtimeMs, ino: 70 });
  const junk = fileEntry(CACHE, "junk.bin", { size: 5, mtimeMs: T0 - 3600_000, ino: 71 });
  const beta = fileEntry(DATA, "beta.sqfs", { size: 10 * MiB, mtimeMs: T0 - 3600_000, ino: 8 });
  const mounted = [{ file: "alpha.sqfs", read: 0 }, { file: "beta.sqfs", read: 0 }];
  const world = (now: number, readOnly: boolean): World => ({ now, images: [alpha, beta], mounted, cached: [copy], readOnly });
  let memory = freshMemory();
  const tick = (w: World, copies = new Map<string, CopyView>()) => {
    const input = { ...observe(w), copies };
    input.observation.cachedir = { kind: "fresh", at: w.now, result: { listing: { dir: { dev: "0:60", ino: 2, mtimeMs: 0, ctimeMs: 0 }, entries: [copy, junk] }, fs: { totalBytes: 1000 * GiB, freeBytes: 900 * GiB }, generation: 1 } };
    const out = reconcile(input, memory, config, w.now);
    memory = out.memory;
    return out;
  };
  const writable = tick(world(T0, false));
  assert.ok(writable.actions.some((a) => a.kind === "delete-file"), "writable: the stray file is deleted");
  const running: CopyView = { name: "beta", imageFile: "beta.sqfs", size: beta.size, mtimeMs: beta.mtimeMs, tmpPath: path.join(CACHE, ".beta.sqfs.tmp"), state: "running", startedAt: T0 };
  const ro = tick(world(T0 + 5000, true), new Map([["beta", running]]));
  assert.equal(ro.cacheDeviceChanged?.after.reason, "ReadOnly");
  assert.deepEqual(ro.actions.map((a) => `${a.kind}:${"dataset" in a && typeof a.dataset === "string" ? a.dataset : ""}`), ["cancel-copy:beta"]);
  assert.equal(ro.report.cacheDevice?.reason, "ReadOnly");
  assert.equal(ro.report.cacheDevice?.up, true);
  assert.equal(ro.report.datasets.find((d) => d.name === "alpha")?.state, "cached", "the cached copy stays served");
  const back = tick(world(T0 + 10_000, false));
  assert.equal(back.cacheDeviceChanged?.after.reason, "Working");
  assert.ok(back.actions.some((a) => a.kind === "delete-file"), "writable again: the cache resumes");
});

test("the probes' reads of images in datadir do not finish: datadir is NotResponding though its stat (from the attribute cache) answered; a read that finishes ends it", () => {
  const mounted = [{ file: "alpha.sqfs", read: 0 }];
  let memory = freshMemory();
  const tick = (w: World) => {
    const out = reconcile(observe(w), memory, config, w.now);
    memory = out.memory;
    return out;
  };
  const first = tick({ now: T0, images: [alpha], mounted });
  const t = first.probeTargets.find((x): x is SlowTarget => x.tier === "slow");
  assert.ok(t);
  const stuck: ProbeRound = { at: T0 + 5000, results: [{ target: t, image: { ok: false, code: "ETIMEDOUT", message: `${alpha.path}: no answer in 25 s`, timedOut: true }, ok: false, code: "ETIMEDOUT", message: "no answer", timedOut: true }] };
  const stalled = tick({ now: T0 + 5000, images: [alpha], mounted, probeRound: stuck });
  assert.equal(stalled.report.storage?.datadir.reason, "NotResponding");
  assert.match(stalled.report.storage?.datadir.message ?? "", /a read of .*alpha\.sqfs did not finish/);
  // No round meanwhile (a stuck one starts no other): still not answering.
  assert.equal(tick({ now: T0 + 6000, images: [alpha], mounted }).report.storage?.datadir.reason, "NotResponding");
  const read: ProbeRound = { at: T0 + 9000, results: [{ target: t, image: { ok: true }, ok: true }] };
  const back = tick({ now: T0 + 9000, images: [alpha], mounted, probeRound: read });
  assert.equal(back.report.storage?.datadir.available, true);
});

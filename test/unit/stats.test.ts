import assert from "node:assert/strict";
import path from "node:path";
import { describe, test } from "node:test";
import type { LoopDevice } from "../../src/observe/loops.js";
import { Stats } from "../../src/plan/stats.js";
import { CACHE, DATA, GiB, loopDevice, makeConfig, MiB, snapshot } from "./helpers.js";

const SECOND = 1000;
const config = makeConfig({ period: 1200 });
const PERIOD_MS = config.period * 1000;
const HALF_WINDOW_S = config.period / 2;
const nameOfFile: ReadonlyMap<string, string> = new Map([
  ["coco.sqfs", "coco"],
  ["imnet.sqfs", "imnet"],
]);
const LIVE = ["coco", "imnet"];

/** A loop device seen this tick: name, backing file (full path) and its read counter in bytes. */
interface Seen {
  loop: string;
  file: string;
  bytes?: number;
  deleted?: boolean;
}

const slow = (file: string) => path.join(DATA, file);
const cached = (file: string) => path.join(CACHE, file);

function tick(stats: Stats, now: number, seen: readonly Seen[], live: readonly string[] = LIVE): void {
  const loops = new Map<string, LoopDevice>();
  const readBytes = new Map<string, number>();
  for (const s of seen) {
    const dev = loopDevice(s.loop, s.file, { deleted: s.deleted ?? false });
    loops.set(dev.majorMinor, dev);
    if (s.bytes !== undefined) readBytes.set(s.loop, s.bytes);
  }
  stats.update(snapshot({ now, loops, readBytes }), config, nameOfFile, live);
}

function totals(stats: Stats, name: string): { slow: number; cache: number } | undefined {
  const d = stats.get(name);
  return d && { slow: d.slow.total, cache: d.cache.total };
}

function assertSaneRates(stats: Stats, names: readonly string[]): void {
  for (const name of names) {
    const r = stats.rate(name);
    for (const v of [r.slow, r.cache]) assert.ok(Number.isFinite(v) && v >= 0 && v < 10 * GiB, `${name}: rate ${v} should be a sane non-negative figure`);
  }
}

describe("Stats.update: read counters attributed per dataset and tier", () => {
  test("a device seen for the first time only sets a baseline", () => {
    const stats = new Stats(PERIOD_MS);
    tick(stats, 0, [{ loop: "loop0", file: slow("coco.sqfs"), bytes: 5 * GiB }]);
    assert.deepEqual(totals(stats, "coco"), { slow: 0, cache: 0 }, "5 GiB read before we watched are not ours to count");
    assert.deepEqual(stats.rate("coco"), { slow: 0, cache: 0 });
    assert.equal(stats.cacheBytesServed, 0);
  });

  test("a backing file in datadir counts as slow, in cachedir as cache, by the image's file name", () => {
    const stats = new Stats(PERIOD_MS);
    tick(stats, 0, [
      { loop: "loop0", file: slow("coco.sqfs"), bytes: 5 * GiB },
      { loop: "loop1", file: cached("coco.sqfs"), bytes: 0 },
      { loop: "loop2", file: slow("imnet.sqfs"), bytes: 100 },
    ]);
    tick(stats, 5 * SECOND, [
      { loop: "loop0", file: slow("coco.sqfs"), bytes: 5 * GiB + 10 * MiB },
      { loop: "loop1", file: cached("coco.sqfs"), bytes: 20 * MiB },
      { loop: "loop2", file: slow("imnet.sqfs"), bytes: 100 + 7 * MiB },
    ]);
    assert.deepEqual(totals(stats, "coco"), { slow: 10 * MiB, cache: 20 * MiB });
    assert.deepEqual(totals(stats, "imnet"), { slow: 7 * MiB, cache: 0 });
    assert.equal(stats.cacheBytesServed, 20 * MiB);
    // Seen for 5 s: divided by half the window, not by 5 s.
    assert.deepEqual(stats.rate("coco"), { slow: (10 * MiB) / HALF_WINDOW_S, cache: (20 * MiB) / HALF_WINDOW_S });
  });

  test("two devices on one dataset's tier add up", () => {
    const stats = new Stats(PERIOD_MS);
    const both = (a: number, b: number): Seen[] => [
      { loop: "loop0", file: slow("coco.sqfs"), bytes: a },
      { loop: "loop5", file: slow("coco.sqfs"), bytes: b },
    ];
    tick(stats, 0, both(0, 0));
    tick(stats, 5 * SECOND, both(MiB, 2 * MiB));
    assert.deepEqual(totals(stats, "coco"), { slow: 3 * MiB, cache: 0 });
  });

  test("a counter that goes backwards sets a new baseline: no negative rate", () => {
    const stats = new Stats(PERIOD_MS);
    tick(stats, 0, [{ loop: "loop0", file: slow("coco.sqfs"), bytes: 5 * GiB }]);
    tick(stats, 5 * SECOND, [{ loop: "loop0", file: slow("coco.sqfs"), bytes: 5 * GiB + MiB }]);
    tick(stats, 10 * SECOND, [{ loop: "loop0", file: slow("coco.sqfs"), bytes: GiB }]);
    assert.deepEqual(totals(stats, "coco"), { slow: MiB, cache: 0 });
    assertSaneRates(stats, LIVE);
    tick(stats, 15 * SECOND, [{ loop: "loop0", file: slow("coco.sqfs"), bytes: GiB + 4 * MiB }]);
    assert.deepEqual(totals(stats, "coco"), { slow: 5 * MiB, cache: 0 }, "reads after the new baseline count");
  });

  test("a device re-attached to another file sets a new baseline: no huge rate for either dataset", () => {
    const stats = new Stats(PERIOD_MS);
    tick(stats, 0, [{ loop: "loop0", file: slow("coco.sqfs"), bytes: 5 * GiB }]);
    // Detached and re-attached to imnet between two ticks; the kernel kept the counter.
    tick(stats, 5 * SECOND, [{ loop: "loop0", file: slow("imnet.sqfs"), bytes: 9 * GiB }]);
    assert.deepEqual(totals(stats, "coco"), { slow: 0, cache: 0 });
    assert.deepEqual(totals(stats, "imnet"), { slow: 0, cache: 0 });
    assertSaneRates(stats, LIVE);
    tick(stats, 10 * SECOND, [{ loop: "loop0", file: slow("imnet.sqfs"), bytes: 9 * GiB + MiB }]);
    assert.deepEqual(totals(stats, "imnet"), { slow: MiB, cache: 0 });
  });

  test("the cached copy re-attached on the same loop device as the slow image: a new baseline, not a jump in cache reads", () => {
    const stats = new Stats(PERIOD_MS);
    tick(stats, 0, [{ loop: "loop0", file: slow("coco.sqfs"), bytes: 3 * GiB }]);
    tick(stats, 5 * SECOND, [{ loop: "loop0", file: cached("coco.sqfs"), bytes: 3 * GiB + 2 * MiB }]);
    assert.deepEqual(totals(stats, "coco"), { slow: 0, cache: 0 });
    assert.equal(stats.cacheBytesServed, 0);
  });

  test("a device that vanishes for a tick is seen afresh: its counter is a baseline again", () => {
    const stats = new Stats(PERIOD_MS);
    tick(stats, 0, [{ loop: "loop0", file: slow("coco.sqfs"), bytes: GiB }]);
    tick(stats, 5 * SECOND, []);
    tick(stats, 10 * SECOND, [{ loop: "loop0", file: slow("coco.sqfs"), bytes: 3 * GiB }]);
    assert.deepEqual(totals(stats, "coco"), { slow: 0, cache: 0 });
    tick(stats, 15 * SECOND, [{ loop: "loop0", file: slow("coco.sqfs"), bytes: 3 * GiB + MiB }]);
    assert.deepEqual(totals(stats, "coco"), { slow: MiB, cache: 0 });
  });

  test("a device not sampled this tick (an idle one, sampled every 30 s) keeps its baseline: what it read meanwhile counts at its next sample", () => {
    const stats = new Stats(PERIOD_MS);
    tick(stats, 0, [{ loop: "loop0", file: slow("coco.sqfs"), bytes: GiB }]);
    tick(stats, 5 * SECOND, [{ loop: "loop0", file: slow("coco.sqfs") }]);
    tick(stats, 10 * SECOND, [{ loop: "loop0", file: slow("coco.sqfs"), bytes: 2 * GiB }]);
    assert.deepEqual(totals(stats, "coco"), { slow: GiB, cache: 0 });
  });
  test("a device gone (detached) loses its baseline: when one of that name comes back, it is a first sighting", () => {
    const stats = new Stats(PERIOD_MS);
    tick(stats, 0, [{ loop: "loop0", file: slow("coco.sqfs"), bytes: GiB }]);
    tick(stats, 5 * SECOND, []);
    tick(stats, 10 * SECOND, [{ loop: "loop0", file: slow("coco.sqfs"), bytes: 2 * GiB }]);
    assert.deepEqual(totals(stats, "coco"), { slow: 0, cache: 0 });
  });

  test("noteAttached: the counter at attach time is the baseline, so the first tick's reads count", () => {
    const stats = new Stats(PERIOD_MS);
    tick(stats, 0, []);
    stats.noteAttached("loop3", cached("coco.sqfs"), 700 * MiB);
    tick(stats, 5 * SECOND, [{ loop: "loop3", file: cached("coco.sqfs"), bytes: 704 * MiB }]);
    assert.deepEqual(totals(stats, "coco"), { slow: 0, cache: 4 * MiB });
    assert.equal(stats.cacheBytesServed, 4 * MiB);
  });

  test("noteAttached for another file than the device now holds is only a baseline", () => {
    const stats = new Stats(PERIOD_MS);
    stats.noteAttached("loop3", cached("imnet.sqfs"), 0);
    tick(stats, 5 * SECOND, [{ loop: "loop3", file: cached("coco.sqfs"), bytes: 8 * GiB }]);
    assert.deepEqual(totals(stats, "coco"), { slow: 0, cache: 0 });
    assert.deepEqual(totals(stats, "imnet"), { slow: 0, cache: 0 });
    assert.equal(stats.cacheBytesServed, 0);
  });

  test("loop devices backed by files outside datadir and cachedir are not attributed, even with a dataset's file name", () => {
    const stats = new Stats(PERIOD_MS);
    const elsewhere = (bytes: number): Seen[] => [
      { loop: "loop0", file: "/home/alice/coco.sqfs", bytes },
      { loop: "loop1", file: path.join(CACHE, "sub", "coco.sqfs"), bytes },
    ];
    tick(stats, 0, elsewhere(0));
    tick(stats, 5 * SECOND, elsewhere(GiB));
    assert.deepEqual(totals(stats, "coco"), { slow: 0, cache: 0 });
    assert.equal(stats.cacheBytesServed, 0);
  });

  test("reads through a device whose file was unlinked still count for the dataset", () => {
    const stats = new Stats(PERIOD_MS);
    tick(stats, 0, [{ loop: "loop1", file: cached("coco.sqfs"), bytes: 0, deleted: true }]);
    tick(stats, 5 * SECOND, [{ loop: "loop1", file: cached("coco.sqfs"), bytes: MiB, deleted: true }]);
    assert.deepEqual(totals(stats, "coco"), { slow: 0, cache: MiB });
  });

  test("cacheBytesServed accumulates over ticks and keeps what removed datasets were served", () => {
    const stats = new Stats(PERIOD_MS);
    const copy = (bytes: number): Seen[] => [{ loop: "loop1", file: cached("coco.sqfs"), bytes }];
    tick(stats, 0, copy(0));
    tick(stats, 5 * SECOND, copy(MiB));
    tick(stats, 10 * SECOND, copy(3 * MiB));
    assert.equal(stats.cacheBytesServed, 3 * MiB);
    // coco's image is deleted: no longer live, but a reader keeps reading its cached copy.
    tick(stats, 15 * SECOND, copy(4 * MiB), ["imnet"]);
    assert.equal(stats.get("coco"), undefined);
    assert.equal(stats.cacheBytesServed, 4 * MiB);
    // Even a copy whose file name no image has any more is cache-tier reading.
    const orphan = (bytes: number): Seen[] => [{ loop: "loop2", file: cached("gone.sqfs"), bytes, deleted: true }];
    tick(stats, 20 * SECOND, orphan(0), ["imnet"]);
    tick(stats, 25 * SECOND, orphan(MiB), ["imnet"]);
    assert.equal(stats.cacheBytesServed, 5 * MiB);
  });

  test("datasets that disappear are forgotten; one that comes back starts from zero", () => {
    const stats = new Stats(PERIOD_MS);
    const reads = (bytes: number): Seen[] => [{ loop: "loop2", file: slow("imnet.sqfs"), bytes }];
    tick(stats, 0, reads(0));
    tick(stats, 5 * SECOND, reads(GiB));
    assert.equal(totals(stats, "imnet")?.slow, GiB);
    tick(stats, 10 * SECOND, reads(GiB), ["coco"]);
    assert.equal(stats.get("imnet"), undefined);
    assert.deepEqual(stats.rate("imnet"), { slow: 0, cache: 0 });
    tick(stats, 15 * SECOND, reads(GiB + MiB));
    assert.deepEqual(totals(stats, "imnet"), { slow: MiB, cache: 0 }, "only reads since it came back");
  });

  test("reads of a file whose dataset is not live (pending, refused) create no entry", () => {
    const stats = new Stats(PERIOD_MS);
    const reads = (bytes: number): Seen[] => [{ loop: "loop0", file: slow("coco.sqfs"), bytes }];
    tick(stats, 0, reads(0), ["imnet"]);
    tick(stats, 5 * SECOND, reads(GiB), ["imnet"]);
    assert.equal(stats.get("coco"), undefined);
    assert.deepEqual(stats.rate("coco"), { slow: 0, cache: 0 });
  });

  test("lastReadAt: set when first seen, moved only by reads", () => {
    const stats = new Stats(PERIOD_MS);
    const reads = (bytes: number): Seen[] => [{ loop: "loop0", file: slow("coco.sqfs"), bytes }];
    tick(stats, 1000, reads(0));
    assert.equal(stats.get("coco")?.lastReadAt, 1000);
    tick(stats, 6000, reads(0));
    assert.equal(stats.get("coco")?.lastReadAt, 1000, "no reads, no move");
    tick(stats, 11000, reads(1));
    assert.equal(stats.get("coco")?.lastReadAt, 11000);
    assert.equal(stats.get("imnet")?.lastReadAt, 1000);
  });

  test("a steady reader is rated at its read rate once the window is full", () => {
    const stats = new Stats(600 * SECOND);
    for (let t = 0; t <= 1800 * SECOND; t += 5 * SECOND) {
      tick(stats, t, [
        { loop: "loop0", file: slow("coco.sqfs"), bytes: 7 * GiB + (t / SECOND) * MiB },
        { loop: "loop1", file: cached("imnet.sqfs"), bytes: (t / SECOND) * 3 * MiB },
      ]);
    }
    assert.deepEqual(stats.rate("coco"), { slow: MiB, cache: 0 });
    assert.deepEqual(stats.rate("imnet"), { slow: 0, cache: 3 * MiB });
  });
});

describe("Stats.setPeriod: a new window without losing the counters", () => {
  test("existing windows switch to the new length at once", () => {
    const stats = new Stats(60 * SECOND);
    // Idle until 100 s, then 2 MiB/s until 120 s.
    for (let t = 0; t <= 120 * SECOND; t += 5 * SECOND) {
      tick(stats, t, [{ loop: "loop0", file: slow("coco.sqfs"), bytes: Math.max(0, t - 100 * SECOND) * ((2 * MiB) / SECOND) }]);
    }
    assert.equal(stats.rate("coco").slow, (40 * MiB) / 65, "60 s window: baseline at 55 s");
    stats.setPeriod(20 * SECOND);
    assert.equal(stats.rate("coco").slow, (40 * MiB) / 25, "20 s window: baseline at 95 s");
    assert.equal(stats.get("coco")?.slow.total, 40 * MiB, "totals are kept");
  });

  test("datasets first seen after setPeriod use the new window (its half-window floor)", () => {
    const stats = new Stats(1200 * SECOND);
    stats.setPeriod(60 * SECOND);
    const reads = (bytes: number): Seen[] => [{ loop: "loop0", file: slow("coco.sqfs"), bytes }];
    tick(stats, 0, reads(0));
    tick(stats, 5 * SECOND, reads(30 * MiB));
    assert.equal(stats.rate("coco").slow, MiB, "30 MiB over half of 60 s");
  });
});

describe("Stats.fastRate: both tiers over a quarter of the period", () => {
  test("a reader that started 150 s ago shows at its full rate on the fast window, at a quarter of it on the period's", () => {
    const stats = new Stats(PERIOD_MS);
    const loop = loopDevice("loop0", path.join(DATA, "coco.sqfs"));
    const nameOfFile = new Map([["coco.sqfs", "coco"]]);
    for (let t = 0; t <= 150; t += 5) {
      stats.update(snapshot({ now: t * SECOND, loops: new Map([["loop0", loop]]), readBytes: new Map([["loop0", t * 4 * MiB]]) }), config, nameOfFile, ["coco"]);
    }
    // 600 MiB read in 150 s: the fast window (300 s) divides by at least 150 s, the period's by 600 s.
    assert.equal(stats.fastRate("coco"), 4 * MiB);
    assert.equal(stats.rate("coco").slow, MiB);
    assert.equal(stats.fastRate("unknown"), 0);
  });
});

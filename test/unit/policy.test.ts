import assert from "node:assert/strict";
import path from "node:path";
import { describe, test } from "node:test";
import type { LoopDevice } from "../../src/observe/loops.js";
import { tmpPathFor, type Dataset } from "../../src/plan/catalog.js";
import type { TransferInfo } from "../../src/plan/diff.js";
import { admitCopies, budget, CACHED_BONUS, capacityBytes, copyPriority, COPY_AMORTIZE_S, ghostBytes, KEEP_FACTOR, occupiedBytes, plan, planValue, UNCACHED_FLOOR, writableBytes } from "../../src/plan/policy.js";
import { CACHE, DATA, dataset, fileEntry, GiB, loopDevice, makeConfig, MiB, prng, randInt, snapshot, TiB } from "./helpers.js";

type Rates = Record<string, { slow: number; cache: number }>;

function planWith(datasets: Dataset[], rates: Rates, budgetBytes: number): string[] {
  const rate = (name: string) => rates[name] ?? { slow: 0, cache: 0 };
  return [...plan({ datasets, rate, budgetBytes })].sort();
}

describe("plan: which datasets to cache", () => {
  test("the bonus is the original's +1 MiB/s", () => assert.equal(CACHED_BONUS, MiB));

  test("the hottest dataset by slow + cache throughput wins the room", () => {
    const datasets = [dataset("a"), dataset("b"), dataset("c")];
    // a: 3 MiB/s on the slow tier; b: 2 + 2 = 4 MiB/s across both tiers; c: idle.
    const rates: Rates = { a: { slow: 3 * MiB, cache: 0 }, b: { slow: 2 * MiB, cache: 2 * MiB } };
    assert.deepEqual(planWith(datasets, rates, 10 * GiB), ["b"]);
    assert.deepEqual(planWith(datasets, rates, 20 * GiB), ["a", "b"]);
  });

  test("cache-tier reads count: a cached dataset read only from the SSD stays hot", () => {
    const datasets = [dataset("a", { cache: "valid" }), dataset("b")];
    const rates: Rates = { a: { slow: 0, cache: 5 * MiB }, b: { slow: 5.5 * MiB, cache: 0 } };
    assert.deepEqual(planWith(datasets, rates, 10 * GiB), ["a"]);
  });

  describe("hysteresis: a challenger must beat 1.25 x the cached rate + 1 MiB/s, after its copy's cost (10 GiB over an hour, 2.84 MiB/s)", () => {
    const cases: { title: string; cache: Dataset["cache"]; challenger: number; winner: string }[] = [
      { title: "cached at 10 MiB/s beats a challenger at 10.5 MiB/s", cache: "valid", challenger: 10.5 * MiB, winner: "old" },
      { title: "cached at 10 MiB/s beats a challenger at 16 MiB/s (16 - 2.84 < 13.5)", cache: "valid", challenger: 16 * MiB, winner: "old" },
      { title: "cached at 10 MiB/s loses to a challenger at 17 MiB/s (17 - 2.84 > 13.5)", cache: "valid", challenger: 17 * MiB, winner: "new" },
      { title: "a stale copy gets no bonus: 10 MiB/s loses to 10.5 MiB/s", cache: "stale", challenger: 10.5 * MiB, winner: "new" },
      { title: "no copy, no bonus: 10 MiB/s loses to 10.5 MiB/s", cache: "none", challenger: 10.5 * MiB, winner: "new" },
    ];
    for (const c of cases) {
      test(c.title, () => {
        const datasets = [dataset("old", { cache: c.cache }), dataset("new")];
        const rates: Rates = { old: { slow: 0, cache: 10 * MiB }, new: { slow: c.challenger, cache: 0 } };
        assert.deepEqual(planWith(datasets, rates, 15 * GiB), [c.winner]);
      });
    }
  });

  test("a copy in progress keeps its place like a cached copy: not cancelled for a marginal gain", () => {
    const datasets = [dataset("old"), dataset("new")];
    const rates: Rates = { old: { slow: 10 * MiB, cache: 0 }, new: { slow: 16 * MiB, cache: 0 } };
    const rate = (name: string) => rates[name] ?? { slow: 0, cache: 0 };
    assert.deepEqual([...plan({ datasets, rate, budgetBytes: 15 * GiB, copying: new Set(["old"]) })], ["old"]);
    assert.deepEqual([...plan({ datasets, rate, budgetBytes: 15 * GiB })], ["new"]);
  });

  test("the fast rate, when given, is what counts", () => {
    const datasets = [dataset("a"), dataset("b")];
    const rates: Rates = { a: { slow: 9 * MiB, cache: 0 }, b: { slow: 1 * MiB, cache: 0 } };
    const rate = (name: string) => rates[name] ?? { slow: 0, cache: 0 };
    const fastRate = (name: string) => (name === "b" ? 20 * MiB : 2 * MiB);
    assert.deepEqual([...plan({ datasets, rate, budgetBytes: 15 * GiB })], ["a"]);
    assert.deepEqual([...plan({ datasets, rate, budgetBytes: 15 * GiB, fastRate })], ["b"]);
  });

  test("planValue: a big uncached dataset keeps half its rate, so it still fills free room", () => {
    const big = dataset("big", { size: 2 * 1024 * GiB });
    assert.equal(planValue(big, 100 * MiB, false), 100 * MiB * UNCACHED_FLOOR, "2 TiB over an hour is 582 MiB/s: the floor applies");
    assert.equal(planValue(dataset("s"), 100 * MiB, false), 100 * MiB - (10 * GiB) / COPY_AMORTIZE_S);
    assert.equal(planValue(dataset("c", { cache: "valid" }), 100 * MiB, false), 100 * MiB * (1 + KEEP_FACTOR) + CACHED_BONUS);
    assert.deepEqual([...plan({ datasets: [big], rate: () => ({ slow: 100 * MiB, cache: 0 }), budgetBytes: 3 * 1024 * GiB })], ["big"]);
  });

  test("room the knapsack's rounding leaves is filled: 1,500 small datasets, each far below 1/1000 of the budget", () => {
    // Each is 1 GiB in a 10 TiB budget (bucket: 10.24 GiB): rounded up, at most 1,000 fit; in bytes all do.
    const datasets = Array.from({ length: 1500 }, (_, i) => dataset(`d${i}`, { size: GiB }));
    const chosen = plan({ datasets, rate: () => ({ slow: MiB, cache: 0 }), budgetBytes: 10 * 1024 * GiB });
    assert.equal(chosen.size, 1500);
  });

  describe("policy = original: the Python daemon's rule", () => {
    const rates: Rates = { old: { slow: 0, cache: 10 * MiB }, new: { slow: 10.5 * MiB, cache: 0 } };
    const rate = (name: string) => rates[name] ?? { slow: 0, cache: 0 };
    test("only +1 MiB/s keeps a cached dataset: 10 MiB/s cached beats 10.5, loses to 11.5", () => {
      const datasets = [dataset("old", { cache: "valid" }), dataset("new")];
      assert.deepEqual([...plan({ datasets, rate, budgetBytes: 15 * GiB, policy: "original" })], ["old"]);
      const faster = (name: string) => (name === "new" ? { slow: 11.5 * MiB, cache: 0 } : rate(name));
      assert.deepEqual([...plan({ datasets, rate: faster, budgetBytes: 15 * GiB, policy: "original" })], ["new"]);
      assert.deepEqual([...plan({ datasets, rate: faster, budgetBytes: 15 * GiB })], ["old"], "adaptive keeps it (1.25 x)");
    });
    test("the period's rate counts, not the fast window; a copy in flight gets no bonus", () => {
      const datasets = [dataset("old"), dataset("new")];
      const fast = (name: string) => (name === "old" ? 40 * MiB : 1 * MiB);
      assert.deepEqual([...plan({ datasets, rate, budgetBytes: 15 * GiB, fastRate: fast, copying: new Set(["old"]), policy: "original" })], ["new"]);
      assert.deepEqual([...plan({ datasets, rate, budgetBytes: 15 * GiB, fastRate: fast, copying: new Set(["old"]) })], ["old"]);
    });
    test("the knapsack's rounding slack stays empty, as in the original", () => {
      const datasets = Array.from({ length: 1500 }, (_, i) => dataset(`d${i}`, { size: GiB }));
      const chosen = plan({ datasets, rate: () => ({ slow: MiB, cache: 0 }), budgetBytes: 10 * 1024 * GiB, policy: "original" });
      assert.ok(chosen.size <= 1000, `${chosen.size} chosen`);
    });
    test("copies are admitted by rate (original) or by the value that chose them (adaptive)", () => {
      const big = dataset("big", { size: 2 * TiB });
      const small = dataset("small");
      const r = (name: string) => (name === "big" ? { slow: 100 * MiB, cache: 0 } : { slow: 60 * MiB, cache: 0 });
      assert.ok(copyPriority({ rate: r, policy: "original" }, big) > copyPriority({ rate: r, policy: "original" }, small));
      assert.ok(copyPriority({ rate: r }, big) < copyPriority({ rate: r }, small), "the big one's copy cost halves its value: 50 < 57 MiB/s");
    });
  });

  test("an idle dataset without a copy is not cached, even with room to spare", () => {
    assert.deepEqual(planWith([dataset("idle")], {}, 10 * TiB), []);
  });

  test("an idle dataset with a valid copy is kept while it fits (the bonus), as in the original", () => {
    assert.deepEqual(planWith([dataset("idle", { cache: "valid" })], {}, 10 * TiB), ["idle"]);
  });

  test("a dataset bigger than the budget is never chosen", () => {
    const datasets = [dataset("big", { size: 2 * TiB })];
    assert.deepEqual(planWith(datasets, { big: { slow: 1000 * MiB, cache: 0 } }, 2 * TiB - 1), []);
    assert.deepEqual(planWith(datasets, { big: { slow: 1000 * MiB, cache: 0 } }, 2 * TiB), ["big"]);
  });

  test("a budget of 0 caches nothing", () => {
    assert.deepEqual(planWith([dataset("a", { cache: "valid" })], { a: { slow: MiB, cache: MiB } }, 0), []);
  });

  test("random cases: the chosen set never exceeds the budget, in bytes", () => {
    const rand = prng(99);
    for (let round = 0; round < 200; round++) {
      const n = randInt(rand, 1, 30);
      const datasets = Array.from({ length: n }, (_, i) =>
        dataset(`d${i}`, { size: randInt(rand, 1, 500 * GiB), cache: rand() < 0.3 ? "valid" : rand() < 0.5 ? "stale" : "none" }),
      );
      const rates: Rates = Object.fromEntries(datasets.map((d) => [d.name, { slow: rand() * 50 * MiB, cache: rand() * 50 * MiB }]));
      const budget = randInt(rand, 0, 2 * TiB);
      const chosen = new Set(planWith(datasets, rates, budget));
      const used = datasets.filter((d) => chosen.has(d.name)).reduce((s, d) => s + d.size, 0);
      assert.ok(used <= budget, `round ${round}: ${used} > ${budget}`);
    }
  });
});

describe("capacityBytes", () => {
  test("bytes are bytes, whatever the file system size", () => {
    assert.equal(capacityBytes({ kind: "bytes", bytes: 500 * GiB }, 100 * GiB), 500 * GiB);
  });
  const cases: [number, number, number][] = [
    [25, 1000 * GiB, 250 * GiB],
    [100, 3 * TiB, 3 * TiB],
    [0, 3 * TiB, 0],
    [33, 1000, 330],
    [1, 999, 9], // floored: never more than the share
    [12.5, 8 * GiB, GiB],
  ];
  for (const [percent, total, expected] of cases) {
    test(`${percent}% of ${total} B is ${expected} B`, () => assert.equal(capacityBytes({ kind: "percent", percent }, total), expected));
  }
});

describe("ghostBytes: dropped copies still held open by a loop device", () => {
  const config = makeConfig();
  const loops = (...devices: LoopDevice[]) => new Map(devices.map((d) => [d.majorMinor, d]));

  test("a deleted cached copy still attached counts its size", () => {
    const snap = snapshot({ loops: loops(loopDevice("loop1", path.join(CACHE, "coco.sqfs"), { deleted: true, sizeBytes: 5 * GiB })) });
    assert.equal(ghostBytes(snap, config), 5 * GiB);
  });

  test("only deleted files directly in cachedir count", () => {
    const snap = snapshot({
      loops: loops(
        loopDevice("loop0", path.join(CACHE, "a.sqfs"), { deleted: true, sizeBytes: 5 * GiB }),
        loopDevice("loop1", path.join(CACHE, "b.sqfs"), { deleted: true, sizeBytes: 7 * GiB }),
        loopDevice("loop2", path.join(CACHE, "live.sqfs"), { deleted: false, sizeBytes: 11 * GiB }), // counted as a file in cachedir
        loopDevice("loop3", path.join(DATA, "replaced.sqfs"), { deleted: true, sizeBytes: 13 * GiB }), // on shared storage
        loopDevice("loop4", "/home/alice/x.img", { deleted: true, sizeBytes: 17 * GiB }),
        loopDevice("loop5", path.join(CACHE, "sub", "c.sqfs"), { deleted: true, sizeBytes: 19 * GiB }),
      ),
    });
    assert.equal(ghostBytes(snap, config), 12 * GiB);
  });

  test("no loop devices, no ghosts", () => assert.equal(ghostBytes(snapshot(), config), 0));
});

describe("occupiedBytes and admitCopies: copies start only into free space", () => {
  const transfer = (name: string, size: number): TransferInfo => ({
    name,
    imageFile: `${name}.sqfs`,
    size,
    mtimeMs: 0,
    tmpPath: tmpPathFor(CACHE, `${name}.sqfs`),
  });

  test("regular files count; a running copy counts at its full size, not its temporary file's current size", () => {
    const snap = snapshot({
      cacheFiles: [
        fileEntry(CACHE, "a.sqfs", { size: 3 * GiB }),
        fileEntry(CACHE, path.basename(tmpPathFor(CACHE, "b.sqfs")), { size: GiB }),
        fileEntry(CACHE, "lost+found", { type: "directory", size: 16384 }),
      ],
    });
    assert.equal(occupiedBytes(snap, new Map([["b", transfer("b", 10 * GiB)]])), 13 * GiB);
    assert.equal(occupiedBytes(snap, new Map()), 4 * GiB, "a temporary file nobody copies into is still a file");
  });

  test("a queued copy without a temporary file yet still counts", () => {
    assert.equal(occupiedBytes(snapshot(), new Map([["b", transfer("b", 10 * GiB)]])), 10 * GiB);
  });

  test("candidates are admitted in order while they fit; one that does not fit does not block smaller ones", () => {
    const candidates = [dataset("hot", { size: 40 * GiB }), dataset("huge", { size: 80 * GiB }), dataset("small", { size: 20 * GiB }), dataset("more", { size: 1 })];
    const admitted = admitCopies({ candidates, occupiedBytes: 40 * GiB, capacityBytes: 100 * GiB, writableBytes: Infinity });
    assert.deepEqual([...admitted], ["hot", "small"]);
  });

  test("a full cache admits nothing; exactly filling it is allowed", () => {
    assert.deepEqual([...admitCopies({ candidates: [dataset("a", { size: 1 })], occupiedBytes: 100, capacityBytes: 100, writableBytes: Infinity })], []);
    assert.deepEqual([...admitCopies({ candidates: [dataset("a", { size: 60 })], occupiedBytes: 40, capacityBytes: 100, writableBytes: Infinity })], ["a"]);
  });

  test("writableBytes: free space minus what running copies have still to write", () => {
    const snap = snapshot({
      cacheFs: { totalBytes: 1000 * GiB, freeBytes: 100 * GiB },
      cacheFiles: [fileEntry(CACHE, path.basename(tmpPathFor(CACHE, "b.sqfs")), { size: 4 * GiB })],
    });
    const transfers = new Map([
      ["b", transfer("b", 10 * GiB)], // 6 GiB to go
      ["c", transfer("c", 20 * GiB)], // queued: 20 GiB to go
    ]);
    assert.equal(writableBytes(snap, transfers), 74 * GiB);
    assert.equal(writableBytes(snap, new Map()), 100 * GiB);
  });

  test("a copy is not admitted into space other programs took, even under the capacity", () => {
    const candidates = [dataset("a", { size: 30 * GiB }), dataset("b", { size: 20 * GiB }), dataset("c", { size: 5 * GiB })];
    const admitted = admitCopies({ candidates, occupiedBytes: 0, capacityBytes: 100 * GiB, writableBytes: 28 * GiB });
    assert.deepEqual([...admitted], ["b", "c"], "a does not fit in 28 GiB; b leaves 8 GiB, enough for c");
  });
});

describe("budget: capacity, copies held open, keep_free", () => {
  const fs = (totalBytes: number, freeBytes: number) => ({ totalBytes, freeBytes });
  const cases: { name: string; config: Parameters<typeof makeConfig>[0]; snap: Parameters<typeof snapshot>[0]; bytes: number }[] = [
    { name: "the capacity, when the file system has room", config: { capacity: { kind: "bytes", bytes: 100 * GiB } }, snap: { cacheFs: fs(1000 * GiB, 900 * GiB) }, bytes: 100 * GiB },
    { name: "N% of the file system", config: { capacity: { kind: "percent", percent: 25 } }, snap: { cacheFs: fs(1000 * GiB, 900 * GiB) }, bytes: 250 * GiB },
    {
      name: "less a dropped copy still held open",
      config: { capacity: { kind: "bytes", bytes: 100 * GiB } },
      snap: { cacheFs: fs(1000 * GiB, 900 * GiB), loops: new Map([["7:1", loopDevice("loop1", path.join(CACHE, "old.sqfs"), { deleted: true, sizeBytes: 30 * GiB })]]) },
      bytes: 70 * GiB,
    },
    {
      name: "other programs' files and keep_free shrink it below the capacity (our own files count as ours)",
      config: { capacity: { kind: "bytes", bytes: 100 * GiB }, keepFree: { kind: "bytes", bytes: 50 * GiB } },
      snap: { cacheFs: fs(1000 * GiB, 80 * GiB), cacheFiles: [fileEntry(CACHE, "a.sqfs", { size: 40 * GiB })] },
      bytes: 70 * GiB,
    },
    { name: "never negative", config: { keepFree: { kind: "percent", percent: 50 } }, snap: { cacheFs: fs(1000 * GiB, 10 * GiB) }, bytes: 0 },
  ];
  for (const c of cases) {
    test(c.name, () => assert.equal(budget(snapshot(c.snap), makeConfig(c.config)).bytes, c.bytes));
  }
});

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { knapsack, type KnapsackItem } from "../../src/plan/knapsack.js";
import { GiB, prng, randInt, TiB } from "./helpers.js";

const sum = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0);

/** ceil(weight * buckets / floor(capacity)), exactly, as the rounding the contract allows. */
function bucketsOf(weight: number, capacity: number, buckets: number): bigint {
  const cap = BigInt(Math.floor(capacity));
  return (BigInt(Math.ceil(weight)) * BigInt(buckets) + cap - 1n) / cap;
}

interface BruteForce {
  /** The true optimum: best value whose weights fit the capacity. */
  exact: number;
  /** The optimum once weights are rounded up to whole buckets (what the DP solves). */
  roundedUp: number;
  /**
   * A provable floor for any rounding-up DP: a set S with
   * sum(weight) <= capacity * (buckets - |S|) / buckets still fits after each
   * weight is rounded up by less than one bucket.
   */
  slack: number;
}

function bruteForce(items: readonly KnapsackItem[], capacity: number, buckets: number): BruteForce {
  const n = items.length;
  const w = items.map((it) => bucketsOf(it.weight, capacity, buckets));
  let exact = 0;
  let roundedUp = 0;
  let slack = 0;
  for (let mask = 0; mask < 1 << n; mask++) {
    let weight = 0;
    let value = 0;
    let bucketSum = 0n;
    let count = 0;
    for (let i = 0; i < n; i++) {
      if (!(mask & (1 << i))) continue;
      const it = items[i] as KnapsackItem;
      weight += it.weight;
      value += it.value;
      bucketSum += w[i] as bigint;
      count++;
    }
    if (weight <= capacity) exact = Math.max(exact, value);
    if (bucketSum <= BigInt(buckets)) roundedUp = Math.max(roundedUp, value);
    if (BigInt(weight) * BigInt(buckets) <= BigInt(capacity) * BigInt(buckets - count)) slack = Math.max(slack, value);
  }
  return { exact, roundedUp, slack };
}

function randomItems(rand: () => number, capacity: number): KnapsackItem[] {
  const n = randInt(rand, 0, 10);
  const items: KnapsackItem[] = [];
  for (let i = 0; i < n; i++) {
    const shape = rand();
    const weight =
      shape < 0.1
        ? 0
        : shape < 0.3
          ? randInt(rand, 1, Math.max(1, Math.floor(capacity / 500))) // smaller than a few buckets
          : shape < 0.9
            ? randInt(rand, 1, capacity)
            : randInt(rand, capacity, Math.floor(capacity * 1.5)); // too big (or exactly the capacity)
    const value = rand() < 0.15 ? 0 : randInt(rand, 1, 1000);
    items.push({ value, weight });
  }
  return items;
}

function checkResult(items: readonly KnapsackItem[], capacity: number, chosen: readonly number[], label: string): void {
  assert.deepEqual([...chosen], [...new Set(chosen)].sort((a, b) => a - b), `${label}: indices unique and ascending`);
  for (const i of chosen) assert.ok(Number.isInteger(i) && i >= 0 && i < items.length, `${label}: index ${i} in range`);
  const weight = sum(chosen.map((i) => (items[i] as KnapsackItem).weight));
  assert.ok(weight <= capacity, `${label}: chosen weight ${weight} exceeds capacity ${capacity}`);
  for (const i of chosen) assert.ok((items[i] as KnapsackItem).value > 0, `${label}: item ${i} of value 0 takes space for nothing`);
}

describe("knapsack: against a brute force on random small cases", () => {
  for (const buckets of [1000, 10, 3]) {
    test(`${buckets} buckets: never over capacity, optimal for rounded-up weights, within the rounding of the true optimum`, () => {
      const rand = prng(0x5eed + buckets);
      let roundingMattered = 0;
      for (let round = 0; round < 600; round++) {
        const capacity = rand() < 0.5 ? randInt(rand, 1, 5000) : randInt(rand, 1, 4 * TiB);
        const items = randomItems(rand, capacity);
        const chosen = knapsack(items, capacity, buckets);
        const label = `case ${round} (capacity ${capacity}, ${JSON.stringify(items)})`;
        checkResult(items, capacity, chosen, label);
        const value = sum(chosen.map((i) => (items[i] as KnapsackItem).value));
        const best = bruteForce(items, capacity, buckets);
        assert.ok(value <= best.exact, `${label}: value ${value} above the true optimum ${best.exact}?`);
        assert.equal(value, best.roundedUp, `${label}: not optimal for the rounded-up weights`);
        assert.ok(value >= best.slack, `${label}: value ${value} below what rounding allows (${best.slack})`);
        if (best.roundedUp < best.exact) roundingMattered++;
      }
      assert.ok(roundingMattered > 0, "the random cases should include some where rounding up costs value");
    });
  }

  test("weights that are whole buckets lose nothing to rounding: the true optimum", () => {
    const rand = prng(42);
    for (let round = 0; round < 300; round++) {
      const bucketBytes = randInt(rand, 1, 4096);
      const capacity = 1000 * bucketBytes;
      const items = Array.from({ length: randInt(rand, 1, 10) }, () => ({ value: randInt(rand, 0, 100), weight: randInt(rand, 0, 1200) * bucketBytes }));
      const chosen = knapsack(items, capacity);
      checkResult(items, capacity, chosen, `case ${round}`);
      assert.equal(sum(chosen.map((i) => (items[i] as KnapsackItem).value)), bruteForce(items, capacity, 1000).exact, `case ${round}`);
    }
  });

  test("many items (no brute force): still never over capacity", () => {
    const rand = prng(7);
    for (let round = 0; round < 30; round++) {
      const capacity = randInt(rand, 1, 10 * TiB);
      const items = Array.from({ length: 200 }, () => ({ value: rand() * 100, weight: randInt(rand, 0, Math.floor(capacity / 20)) }));
      checkResult(items, capacity, knapsack(items, capacity), `case ${round}`);
    }
  });
});

describe("knapsack: edge cases", () => {
  test("no items, or a capacity of 0, negative or NaN: nothing chosen", () => {
    assert.deepEqual(knapsack([], 100 * GiB), []);
    const items = [{ value: 5, weight: 0 }, { value: 5, weight: 1 }];
    assert.deepEqual(knapsack(items, 0), []);
    assert.deepEqual(knapsack(items, -1), []);
    assert.deepEqual(knapsack(items, Number.NaN), []);
  });

  test("a capacity below one byte chooses nothing", () => {
    assert.deepEqual(knapsack([{ value: 5, weight: 0.1 }], 0.5), []);
  });

  test("an item bigger than the capacity is never chosen, however valuable", () => {
    const items = [
      { value: 1e12, weight: 10 * GiB + 1 },
      { value: 1, weight: 3 * GiB },
    ];
    assert.deepEqual(knapsack(items, 10 * GiB), [1]);
  });

  test("an item exactly the capacity fits", () => {
    assert.deepEqual(knapsack([{ value: 1, weight: 10 * GiB }], 10 * GiB), [0]);
    assert.deepEqual(knapsack([{ value: 1, weight: 4 * TiB + 12345 }], 4 * TiB + 12345), [0]);
  });

  test("items of value 0 are not chosen, even when there is room", () => {
    const items = [
      { value: 0, weight: GiB },
      { value: 3, weight: GiB },
      { value: 0, weight: 0 },
    ];
    assert.deepEqual(knapsack(items, 100 * GiB), [1]);
  });

  test("weightless items of some value are always chosen", () => {
    const items = [
      { value: 1, weight: 0 },
      { value: 100, weight: 10 * GiB },
      { value: 1, weight: 0 },
    ];
    assert.deepEqual(knapsack(items, 10 * GiB), [0, 1, 2]);
  });

  test("the original's flooring would overshoot: 2 x 5009 B in 10000 B floor to 2 x 500 buckets; rounding up keeps one", () => {
    // With 1000 buckets of 10 B, floor(5009 / 10) = 500 buckets each: both "fit" in 1000 buckets, 10018 B > 10000 B.
    const items = [
      { value: 10, weight: 5009 },
      { value: 10, weight: 5009 },
    ];
    const chosen = knapsack(items, 10_000);
    assert.equal(chosen.length, 1);
    checkResult(items, 10_000, chosen, "overshoot case");
  });

  test("many items just over a bucket each: the original would fill 1000 floored buckets and overshoot by ~half", () => {
    // 1000 buckets of 1 GiB in a 1000 GiB cache; items of 1.9 GiB floor to 1 bucket.
    const capacity = 1000 * GiB;
    const items = Array.from({ length: 1000 }, () => ({ value: 1, weight: Math.floor(1.9 * GiB) }));
    const chosen = knapsack(items, capacity);
    checkResult(items, capacity, chosen, "1000 x 1.9 GiB");
    // ceil(1.9) = 2 buckets each: 500 items, 950 GiB.
    assert.equal(chosen.length, 500);
  });

  test("a small but valuable item is preferred to a big, less valuable one", () => {
    const items = [
      { value: 5, weight: 90 * GiB },
      { value: 6, weight: 20 * GiB },
      { value: 1, weight: 80 * GiB },
    ];
    assert.deepEqual(knapsack(items, 100 * GiB), [1, 2]);
  });

  test("TiB-sized weights are rounded exactly (no float rounding down)", () => {
    // 1 byte over 1/1000 of the capacity must cost 2 buckets, so at most 500 of them are chosen.
    const capacity = 1000 * TiB;
    const items = Array.from({ length: 600 }, () => ({ value: 1, weight: TiB + 1 }));
    const chosen = knapsack(items, capacity);
    checkResult(items, capacity, chosen, "TiB + 1");
    assert.equal(chosen.length, 500, "ceil((TiB + 1) * 1000 / (1000 TiB)) = 2 buckets; 500 x 2 = 1000");
  });
});

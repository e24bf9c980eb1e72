/** plan/decide.ts: the one decision between observing and acting, which the daemon and the simulator share. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { decide, type DecideInput } from "../../src/plan/decide.js";
import { dataset, GiB, MiB } from "./helpers.js";

const rates: Record<string, number> = { hot: 200 * MiB, warm: 50 * MiB, cold: 0, pinned: 0 };

function input(over: Partial<DecideInput> = {}): DecideInput {
  return {
    datasets: [dataset("hot", { size: 10 * GiB }), dataset("warm", { size: 10 * GiB }), dataset("cold", { size: 10 * GiB }), dataset("pinned", { size: 10 * GiB })],
    pinned: new Set(["pinned"]),
    policy: "adaptive",
    rate: (n) => ({ slow: rates[n] ?? 0, cache: 0 }),
    fastRate: (n) => rates[n] ?? 0,
    copying: new Set(),
    space: { capacity: 25 * GiB, budget: 25 * GiB, ghosts: 0, occupied: 0, writable: 100 * GiB },
    ...over,
  };
}

describe("decide: pins, the policy within the budget, then copies admitted into free space", () => {
  test("the pin first, then the hottest that fits; copies admitted pinned first, then by value", () => {
    const d = decide(input());
    assert.deepEqual([...d.cached].sort(), ["hot", "pinned"]);
    assert.deepEqual([...d.admitted].sort(), ["hot", "pinned"]);
    assert.deepEqual(d.pinProblems, []);
  });
  test("admission only into space free now: with 15 GiB already taken, one copy starts, the pin's", () => {
    const d = decide(input({ space: { capacity: 25 * GiB, budget: 25 * GiB, ghosts: 0, occupied: 15 * GiB, writable: 100 * GiB } }));
    assert.deepEqual([...d.admitted], ["pinned"]);
  });
  test("a copy already running is not admitted again", () => {
    assert.ok(!decide(input({ copying: new Set(["hot"]) })).admitted.has("hot"));
  });
  test("pins that do not fit, and pins of datasets that do not exist, are said in one line each", () => {
    const d = decide(input({ pinned: new Set(["pinned", "hot", "warm", "ghost"]), pending: new Set(["ghost"]) }));
    assert.deepEqual(d.pinProblems.filter((p) => p.includes("does not exist")), [], "a name still being written is not unknown");
    const over = decide(input({ pinned: new Set(["pinned", "hot", "warm", "nosuch"]) }));
    assert.ok(over.pinProblems.includes('pinned dataset "nosuch" does not exist'), over.pinProblems.join("; "));
    assert.match(over.pinProblems.find((p) => p.startsWith("pins exceed")) ?? "", /warm \(10\.0 GiB\) not cached; pinned datasets need 30\.0 GiB, the cache has 25\.0 GiB/);
  });
});

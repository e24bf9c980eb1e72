/** Pre-staging's pure parts: the queue as squeue prints it, each node's part, the signed channel's message, the node's staged set, decide's room. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { expandHostlist, parseQueue, planStaging } from "../../src/slurm/queue.js";
import { parseStageUrl, stageUrl, MAX_ENTRIES } from "../../src/fleet/stage.js";
import { GRACE_MS, StagedSet, TTL_MS } from "../../src/slurm/stager.js";
import { decide } from "../../src/plan/decide.js";
import { dataset, GiB } from "./helpers.js";

const T0 = Date.UTC(2030, 0, 1);

describe("the queue", () => {
  test("host lists: ranges with their padding, several ranges, plain names; not one: undefined", () => {
    assert.deepEqual(expandHostlist("node[01-03,7],gpu5"), ["node01", "node02", "node03", "node7", "gpu5"]);
    assert.deepEqual(expandHostlist("node1"), ["node1"]);
    assert.equal(expandHostlist("node[3-1]"), undefined);
    assert.equal(expandHostlist("no de"), undefined);
    assert.equal(expandHostlist("n[1-100000]")?.length, 1024, "bounded");
  });
  test("squeue --start's lines (SLURM_TIME_FORMAT=%s): jobs placed, with a start, naming datasets; the others left out", () => {
    const text = [
      "12|1796339863|node1|datasets:alpha,beta",
      "13|1796339900|node[2-3]|sweep 7; datasets:coco lr=0.1",
      "14|N/A|(null)|datasets:alpha",
      "15|1796339999|node4|no datasets here",
      "16|1796340000|node5|a|b datasets:gamma",
      "garbage",
    ].join("\n");
    assert.deepEqual(parseQueue(text), [
      { jobId: 12, startAt: 1796339863000, nodes: ["node1"], datasets: ["alpha", "beta"] },
      { jobId: 13, startAt: 1796339900000, nodes: ["node2", "node3"], datasets: ["coco"] },
      { jobId: 16, startAt: 1796340000000, nodes: ["node5"], datasets: ["gamma"] },
    ]);
  });
  test("each node's part: jobs within the horizon, the earliest job for each dataset", () => {
    const jobs = [
      { jobId: 2, startAt: T0 + 600_000, nodes: ["n1"], datasets: ["alpha"] },
      { jobId: 1, startAt: T0 + 60_000, nodes: ["n1", "n2"], datasets: ["alpha", "beta"] },
      { jobId: 3, startAt: T0 + 7200_000, nodes: ["n3"], datasets: ["gamma"] },
    ];
    const parts = planStaging(jobs, T0, 3600_000);
    assert.deepEqual([...parts.keys()].sort(), ["n1", "n2"], "job 3 starts past the horizon");
    assert.deepEqual(parts.get("n1"), [
      { dataset: "alpha", jobId: 1, startAt: T0 + 60_000 },
      { dataset: "beta", jobId: 1, startAt: T0 + 60_000 },
    ]);
  });
});

describe("the stage message", () => {
  test("a node's part goes through the URL and back", () => {
    const entries = [{ dataset: "imagenet.2012", jobId: 7, startAt: T0 }];
    assert.deepEqual(parseStageUrl(stageUrl(entries)), entries);
  });
  test("what is not one is refused: another path, bad JSON, a path for a name, too many entries, bad numbers", () => {
    const url = (data: unknown) => `/v1/stage?e=${Buffer.from(JSON.stringify(data)).toString("base64url")}`;
    assert.equal(parseStageUrl("/v1/images/x"), undefined);
    assert.equal(parseStageUrl("/v1/stage?e=%%%"), undefined);
    assert.equal(parseStageUrl(url([["../etc", 1, T0]])), undefined);
    assert.equal(parseStageUrl(url([["a/b", 1, T0]])), undefined);
    assert.equal(parseStageUrl(url(Array.from({ length: MAX_ENTRIES + 1 }, (_, i) => [`d${i}`, i, T0]))), undefined);
    assert.equal(parseStageUrl(url([["a", -1, T0]])), undefined);
    assert.equal(parseStageUrl(url([["a", 1, "soon"]])), undefined);
    assert.deepEqual(parseStageUrl(url([])), []);
  });
});

describe("StagedSet", () => {
  test("the current part, earliest first, until the job's start and a grace, or until the stager stops refreshing it", () => {
    const s = new StagedSet();
    s.receive("node2:9456", [{ dataset: "b", jobId: 2, startAt: T0 + 2000 }, { dataset: "a", jobId: 1, startAt: T0 + 1000 }], T0);
    assert.deepEqual(s.current(T0).map((e) => e.dataset), ["a", "b"]);
    assert.deepEqual(s.current(T0 + 1000 + GRACE_MS + 1).map((e) => e.dataset), [], "past the grace");
    assert.deepEqual(s.current(T0 + TTL_MS + 1), [], "not refreshed");
    s.receive("node2:9456", [], T0);
    assert.deepEqual(s.current(T0), [], "an empty part clears");
  });
  test("hits and misses, each once: when the job is due, or leaves the plan before (it started early)", () => {
    const s = new StagedSet();
    s.receive("x", [{ dataset: "a", jobId: 1, startAt: T0 + 1000 }, { dataset: "b", jobId: 2, startAt: T0 + 5000 }], T0);
    const cached = new Set(["a"]);
    s.settle(T0, (n) => cached.has(n));
    assert.deepEqual([s.hits, s.misses], [0, 0], "nothing due yet");
    s.settle(T0 + 1000, (n) => cached.has(n));
    s.settle(T0 + 1500, (n) => cached.has(n));
    assert.deepEqual([s.hits, s.misses], [1, 0], "a: due and cached, once");
    s.receive("x", [], T0 + 2000);
    s.settle(T0 + 2000, (n) => cached.has(n));
    assert.deepEqual([s.hits, s.misses], [1, 1], "b: left the plan (started early) uncached");
  });
});

describe("decide: staged datasets", () => {
  const space = (budget: number) => ({ capacity: budget, budget, ghosts: 0, occupied: 0, writable: budget });
  const rates = { rate: (n: string) => ({ slow: n === "hot" ? 1e6 : 0, cache: 0 }), fastRate: () => 0 };
  const later = (...names: string[]) => names.map((name) => ({ name, due: false }));
  const due = (...names: string[]) => names.map((name) => ({ name, due: true }));
  test("jobs not due yet: cached in the room the pins and the policy leave, earliest first; never in place of what they chose", () => {
    const ds = [dataset("hot", { size: 4 * GiB }), dataset("s1", { size: 4 * GiB }), dataset("s2", { size: 4 * GiB })];
    const d = decide({ datasets: ds, pinned: new Set(["hot"]), policy: "adaptive", ...rates, copying: new Set(), space: space(10 * GiB), staged: later("s2", "s1") });
    assert.deepEqual([...d.cached].sort(), ["hot", "s2"], "hot pinned; s2 (the earlier job) in the room left; s1 does not fit");
    assert.ok(d.admitted.has("s2"));
    const none = decide({ datasets: ds, pinned: new Set(["hot"]), policy: "adaptive", ...rates, copying: new Set(), space: space(10 * GiB) });
    assert.deepEqual([...none.cached], ["hot"], "without staging, the room stays empty");
  });

  test("jobs due soon: their datasets make room, after the pins and what running jobs read from the cache, before the policy's other choices", () => {
    // The policy would keep warm (read over the period, not now) and reading (read now); the cache holds 12 GiB.
    const ds = [
      dataset("pin", { size: 2 * GiB }),
      dataset("reading", { size: 4 * GiB, cache: "valid" }),
      dataset("warm", { size: 4 * GiB, cache: "valid" }),
      dataset("s1", { size: 4 * GiB }),
      dataset("s2", { size: 4 * GiB }),
    ];
    const policyRates = {
      rate: (n: string) => ({ slow: 0, cache: n === "reading" || n === "warm" ? 1e8 : 0 }),
      fastRate: (n: string) => (n === "reading" ? 1e8 : 0),
    };
    const input = { datasets: ds, pinned: new Set(["pin"]), policy: "adaptive" as const, ...policyRates, copying: new Set<string>(), space: space(12 * GiB) };
    assert.deepEqual([...decide(input).cached].sort(), ["pin", "reading", "warm"], "no staging: the policy's choice");
    assert.deepEqual([...decide({ ...input, staged: later("s1", "s2") }).cached].sort(), ["pin", "reading", "warm"], "not due: nothing evicted");
    const d = decide({ ...input, staged: due("s1", "s2") });
    assert.deepEqual([...d.cached].sort(), ["pin", "reading", "s1"], "s1 (the earlier job) in place of warm; reading is in use and stays; s2 does not fit");
    assert.deepEqual([...d.admitted], ["pin", "s1"], "copied: the pin first, then s1");
    const copying = decide({ ...input, copying: new Set(["warm"]), fastRate: (n: string) => (n === "reading" || n === "warm" ? 1e8 : 0), staged: due("s1") });
    assert.deepEqual([...copying.cached].sort(), ["pin", "reading", "warm"], "a copy that jobs read now is in use too: the staged dataset waits");
  });
});

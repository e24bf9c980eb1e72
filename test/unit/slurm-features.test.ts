/** src/slurm/features.ts: the datasets a node holds as its Slurm features, told only on change, batched, the site's features kept. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { Clock } from "../../src/lib/clock.js";
import { CommandFailedError, type Runner } from "../../src/lib/exec.js";
import { FeatureAdvertiser, featureOf, heldFeatures, MIN_INTERVAL_MS, parseNodeFeatures, REFRESH_MS, withOurs } from "../../src/slurm/features.js";
import type { DatasetStatus } from "../../src/report/status.js";

const ds = (name: string, state: DatasetStatus["state"]) => ({ name, state }) as DatasetStatus;

describe("features of what a node holds", () => {
  test("cached and copying datasets, sorted, each once; slow and queued ones not", () => {
    assert.deepEqual(heldFeatures({ datasets: [ds("coco", "cached"), ds("imagenet", "copying"), ds("mnist", "slow"), ds("kinetics", "queued")] }), ["ds_coco", "ds_imagenet"]);
  });
  test("a name's characters that a feature cannot hold become _", () => {
    assert.equal(featureOf("imagenet-2012.v2"), "ds_imagenet_2012_v2");
  });
  test("scontrol's line: both lists; (null) is none", () => {
    const line = "NodeName=node2 Arch=x86_64 CoresPerSocket=1 AvailableFeatures=gpu,ds_old ActiveFeatures=gpu,ds_old Gres=(null) NodeAddr=10.0.0.2";
    assert.deepEqual(parseNodeFeatures(line), { available: ["gpu", "ds_old"], active: ["gpu", "ds_old"] });
    assert.deepEqual(parseNodeFeatures("NodeName=n AvailableFeatures=(null) ActiveFeatures=(null)"), { available: [], active: [] });
  });
  test("ours replaced, the site's kept in their order", () => {
    assert.deepEqual(withOurs(["gpu", "ds_old", "ib"], ["ds_coco"]), ["gpu", "ib", "ds_coco"]);
  });
});

describe("FeatureAdvertiser", () => {
  function setup(fail = false) {
    let t = 0;
    const clock = { now: () => t, monotonic: () => t, sleep: async () => undefined } as Clock;
    const calls: string[][] = [];
    const run: Runner = async (file, args) => {
      calls.push([file, ...args]);
      if (fail) throw new CommandFailedError([file, ...args], 1, null, "slurm_load_node error: Unable to contact slurm controller (connect failure)\n", 1, false, false);
      return { stdout: args[0] === "show" ? "NodeName=node2 AvailableFeatures=gpu,ds_gone ActiveFeatures=gpu,ds_gone\n" : "", stderr: "", ms: 1 };
    };
    const errors: string[] = [];
    const adv = new FeatureAdvertiser(run, clock, "node2", 5000, (m) => errors.push(m));
    const settle = () => new Promise((r) => setTimeout(r, 5));
    return { adv, calls, errors, settle, at: (ms: number) => (t = ms) };
  }

  test("the first update tells slurmctld, keeping the site's features; the same set again says nothing; a change waits for the batching interval", async () => {
    const { adv, calls, settle, at } = setup();
    adv.update({ datasets: [ds("coco", "cached")] });
    await settle();
    assert.deepEqual(calls.map((c) => c.slice(1, 3).join(" ")), ["show node", "update NodeName=node2"]);
    assert.deepEqual(calls[1]?.slice(3), ["AvailableFeatures=gpu,ds_coco", "ActiveFeatures=gpu,ds_coco"]);
    assert.deepEqual(adv.state.features, ["ds_coco"]);
    calls.length = 0;
    at(MIN_INTERVAL_MS * 3);
    adv.update({ datasets: [ds("coco", "cached")] });
    await settle();
    assert.equal(calls.length, 0, "unchanged: no call");
    // Two changes within the interval: one call, with the last set.
    at(MIN_INTERVAL_MS * 3 + 1000);
    adv.update({ datasets: [ds("coco", "cached"), ds("mnist", "copying")] });
    await settle();
    assert.equal(calls.length, 2, "a change after the interval: told at once");
    calls.length = 0;
    at(MIN_INTERVAL_MS * 3 + 2000);
    adv.update({ datasets: [ds("mnist", "cached")] });
    at(MIN_INTERVAL_MS * 3 + 3000);
    adv.update({ datasets: [] });
    await settle();
    assert.equal(calls.length, 0, "within the interval: held back");
    at(MIN_INTERVAL_MS * 4 + 1000);
    adv.update({ datasets: [] });
    await settle();
    assert.deepEqual(calls.at(-1)?.slice(3), ["AvailableFeatures=gpu", "ActiveFeatures=gpu"], "the last set (none of ours), once");
    calls.length = 0;
    at(MIN_INTERVAL_MS * 4 + 1000 + REFRESH_MS);
    adv.update({ datasets: [] });
    await settle();
    assert.equal(calls.length, 2, "told again after REFRESH_MS (a restarted slurmctld forgets)");
  });

  test("slurmctld unreachable: said once, retried after the interval, the state says why", async () => {
    const { adv, errors, settle, at } = setup(true);
    adv.update({ datasets: [ds("coco", "cached")] });
    await settle();
    at(MIN_INTERVAL_MS + 1);
    adv.update({ datasets: [ds("coco", "cached")] });
    await settle();
    assert.equal(errors.length, 1);
    assert.match(errors[0] ?? "", /^scontrol show node: slurm_load_node error: Unable to contact slurm controller/);
    assert.match(adv.state.error ?? "", /Unable to contact/);
    assert.equal(adv.state.calls, 2, "two attempts, each stopped at its first call");
  });
});

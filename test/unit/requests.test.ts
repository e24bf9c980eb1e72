/** state/requests.ts: what `evict` and `release` leave for the daemon, and what the daemon believes of it. */
import assert from "node:assert/strict";
import { chownSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { parseRequest, requestsDir, takeReply, takeRequests, writeReply, writeRequest } from "../../src/state/requests.js";
import { tempDir } from "./helpers.js";
import { planEviction } from "../../src/plan/requests.js";
import type { DatasetStatus } from "../../src/report/status.js";

test("parseRequest takes evict and release, and refuses anything else with a reason", () => {
  assert.deepEqual(parseRequest('{"id":"1-ab","kind":"evict","names":["coco"],"force":true}'), { id: "1-ab", kind: "evict", names: ["coco"], force: true });
  assert.deepEqual(parseRequest('{"id":"1-ab","kind":"release"}'), { id: "1-ab", kind: "release", all: false });
  assert.throws(() => parseRequest('{"id":"../x","kind":"release"}'), /no valid id/);
  assert.throws(() => parseRequest('{"id":"1","kind":"evict","names":["../etc"]}'), /names must be dataset names/);
  assert.throws(() => parseRequest('{"id":"1","kind":"format"}'), /unknown kind "format"/);
  assert.throws(() => parseRequest("[]"), /no valid id/);
});

test("a request and its reply go through the directory, each read once", async () => {
  const { dir, cleanup } = await tempDir();
  try {
    await writeRequest(dir, { id: "7-a", kind: "evict", names: ["coco"], force: false });
    assert.deepEqual(await takeRequests(dir), { requests: [{ id: "7-a", kind: "evict", names: ["coco"], force: false }], bad: [] });
    assert.deepEqual(await takeRequests(dir), { requests: [], bad: [] }, "taken once");
    assert.equal(await takeReply(dir, "7-a"), undefined);
    await writeReply(dir, "7-a", { ok: true, lines: ["coco: evicting (cached)"] });
    assert.deepEqual(await takeReply(dir, "7-a"), { ok: true, lines: ["coco: evicting (cached)"] });
    assert.deepEqual(readdirSync(requestsDir(dir)), []);
  } finally {
    await cleanup();
  }
});

test("a link, or a file another user owns, is not believed: reported and removed", { skip: process.getuid?.() !== 0 ? "needs root, to own files as another user" : false }, async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const requests = requestsDir(dir);
    mkdirSync(requests);
    writeFileSync(path.join(dir, "target.json"), '{"id":"1","kind":"release","all":true}');
    symlinkSync(path.join(dir, "target.json"), path.join(requests, "a.request"));
    writeFileSync(path.join(requests, "b.request"), '{"id":"2","kind":"release","all":true}');
    chownSync(path.join(requests, "b.request"), 65534, 65534);
    const { requests: taken, bad } = await takeRequests(dir);
    assert.deepEqual(taken, []);
    assert.equal(bad.length, 2);
    assert.match(bad[0] ?? "", /a\.request: .*ELOOP/);
    assert.match(bad[1] ?? "", /b\.request: not a regular file of root's/);
    assert.deepEqual(readdirSync(requests), []);
  } finally {
    await cleanup();
  }
});

test("planEviction: a cached dataset is evicted and forgotten; a pinned one needs --force (which unpins it); a config pin is refused; unknown names get the closest", () => {
  const ds = (name: string, state: DatasetStatus["state"], pinned = false): DatasetStatus => ({ name, imageFile: `${name}.sqfs`, sizeBytes: 1, state, pinned, slowBytesPerSecond: 0, cacheBytesPerSecond: 0, slowBytesRead: 0, cacheBytesRead: 0 });
  const datasets = [ds("coco", "cached"), ds("laion", "copying"), ds("places", "cached", true), ds("mnist", "slow"), ds("fixed", "cached", true)];
  const plan = planEviction(["coco", "laion", "places", "mnist", "fixed", "cocoo"], false, datasets, ["fixed"]);
  assert.equal(plan.ok, false);
  assert.deepEqual(plan.evict, ["coco", "laion"]);
  assert.deepEqual(plan.forget, ["coco", "laion", "mnist"]);
  assert.deepEqual(plan.unpin, []);
  assert.deepEqual(plan.lines, [
    "coco: evicting (cached); files open on the cached copy read on until closed",
    "laion: evicting (copying); files open on the cached copy read on until closed",
    "places: pinned; --force removes its pins and evicts it",
    "mnist: not cached",
    "fixed: pinned by the configuration file (pin = ...); remove it there and reload first",
    'no dataset "cocoo"; did you mean coco?',
  ]);
  const forced = planEviction(["places", "fixed"], true, datasets, ["fixed"]);
  assert.deepEqual([forced.evict, forced.unpin, forced.ok], [["places"], ["places"], false]);
});

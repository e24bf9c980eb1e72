/** "Unavailable" is never "empty" (plan/availability.ts): when a scan is believed, and what is held back meanwhile. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { FileEntry } from "../../src/observe/images.js";
import type { Listing } from "../../src/observe/scan.js";
import type { ScanView } from "../../src/observe/dir-watch.js";
import { allowedUnder, applyHolds, assessDir, massDisappearance, type AssessInput, type DirCondition } from "../../src/plan/availability.js";
import type { Action } from "../../src/plan/diff.js";
import { DATA, dataset, fileEntry } from "./helpers.js";

const NOW = 1_000_000;
const DEV = "0:40";

function listing(names: string[], dev = DEV): Listing {
  return { dir: { dev, ino: 2, mtimeMs: 0, ctimeMs: 0 }, entries: names.map((n): FileEntry => fileEntry(DATA, n)) };
}
const fresh = (names: string[], dev = DEV): ScanView<Listing> => ({ kind: "fresh", result: listing(names, dev), at: NOW });
const up: DirCondition = { dir: "datadir", path: DATA, available: true, reason: "Available", message: "answering", since: 0, lastGoodScanAt: NOW - 5000 };
const four = ["a.sqfs", "b.sqfs", "c.sqfs", "d.sqfs"];

function assess(over: Partial<AssessInput>) {
  return assessDir({ previous: up, view: fresh(four), acceptedDev: DEV, lastNames: new Set(four), known: new Set(four), now: NOW, timeoutMs: 30_000, vanishShare: 0.5, confirmed: false, ...over });
}

describe("assessDir: when a scan of datadir is believed", () => {
  test("an ordinary scan is believed; the condition stays available", () => {
    const a = assess({});
    assert.equal(a.accept, true);
    assert.equal(a.condition.available, true);
    assert.equal(a.condition.lastGoodScanAt, NOW);
  });
  test("one image removed from a directory that lists the others: a deletion, believed", () => {
    assert.equal(assess({ view: fresh(["a.sqfs", "b.sqfs", "c.sqfs"]) }).accept, true);
  });
  test("a scan still running within scan_timeout: not believed, nothing reported", () => {
    const a = assess({ view: { kind: "waiting", since: NOW - 10_000 } });
    assert.equal(a.accept, false);
    assert.deepEqual(a.condition, up);
  });
  test("a scan running past scan_timeout: NotResponding, saying for how long, since now", () => {
    const a = assess({ view: { kind: "waiting", since: NOW - 31_000 } });
    assert.equal(a.accept, false);
    assert.equal(a.condition.available, false);
    assert.equal(a.condition.reason, "NotResponding");
    assert.equal(a.condition.message, "not answering for 31 s");
    assert.equal(a.condition.since, NOW);
  });
  const failures: [string, ScanView<Listing>, string, RegExp][] = [
    ["EIO", { kind: "failed", code: "EIO", message: "listing /srv/data: Input/output error", timedOut: false, at: NOW }, "IOError", /^EIO: /],
    ["ESTALE", { kind: "failed", code: "ESTALE", message: "Stale file handle", timedOut: false, at: NOW }, "IOError", /^ESTALE/],
    ["ENOTCONN", { kind: "failed", code: "ENOTCONN", message: "x", timedOut: false, at: NOW }, "IOError", /^ENOTCONN/],
    ["EACCES", { kind: "failed", code: "EACCES", message: "x", timedOut: false, at: NOW }, "IOError", /^EACCES/],
    ["ENOENT", { kind: "failed", code: "ENOENT", message: "x", timedOut: false, at: NOW }, "Missing", /does not exist/],
    ["a child that timed out", { kind: "failed", code: "ETIMEDOUT", message: "listing did not finish in 30 s", timedOut: true, at: NOW }, "NotResponding", /did not finish/],
  ];
  for (const [title, view, reason, message] of failures) {
    test(`a failed scan (${title}) is not believed: ${reason}`, () => {
      const a = assess({ view });
      assert.equal(a.accept, false);
      assert.equal(a.condition.reason, reason);
      assert.match(a.condition.message, message);
    });
  }
  test("an outage that changes cause keeps its start", () => {
    const down: DirCondition = { ...up, available: false, reason: "NotResponding", message: "x", since: NOW - 60_000 };
    const a = assess({ previous: down, view: { kind: "failed", code: "EIO", message: "x", timedOut: false, at: NOW } });
    assert.equal(a.condition.since, NOW - 60_000);
  });
  test("back after an outage: believed, 'answering again after N s'", () => {
    const down: DirCondition = { ...up, available: false, reason: "IOError", message: "x", since: NOW - 42_000 };
    const a = assess({ previous: down });
    assert.equal(a.accept, true);
    assert.equal(a.condition.message, "answering again after 42 s");
    assert.equal(a.condition.since, NOW);
  });
  test("three of four images gone at once, nothing new: MassDisappearance, naming them", () => {
    const a = assess({ view: fresh(["a.sqfs"]) });
    assert.equal(a.accept, false);
    assert.equal(a.condition.reason, "MassDisappearance");
    assert.deepEqual(a.condition.vanished, ["b.sqfs", "c.sqfs", "d.sqfs"]);
    assert.match(a.condition.message, /3 of 4 known images \(b.sqfs, c.sqfs, d.sqfs\) vanished/);
  });
  test("...believed once the administrator confirms it", () => {
    assert.equal(assess({ view: fresh(["a.sqfs"]), confirmed: true }).accept, true);
  });
  test("...and not held back with vanish_threshold = off", () => {
    assert.equal(assess({ view: fresh(["a.sqfs"]), vanishShare: undefined }).accept, true);
  });
  test("datadir on another file system, empty (unmounted to the directory beneath): FilesystemChanged", () => {
    const a = assess({ view: fresh([], "254:0") });
    assert.equal(a.accept, false);
    assert.equal(a.condition.reason, "FilesystemChanged");
    assert.match(a.condition.message, /device 0:40 is now 254:0/);
  });
  test("...even with a single known image (a race: the mount table read after the mount, the directory listed before it)", () => {
    assert.equal(assess({ view: fresh([], "254:0"), known: new Set(["a.sqfs"]), lastNames: new Set(["a.sqfs"]) }).condition.reason, "FilesystemChanged");
  });
  test("on another file system, one of four images missing (deleted meanwhile): believed", () => {
    assert.equal(assess({ view: fresh(["a.sqfs", "b.sqfs", "c.sqfs"], "0:41") }).accept, true);
  });
  test("datadir on another file system with its images (mounted again): believed, and the new device remembered", () => {
    const a = assess({ view: fresh(four, "0:41") });
    assert.equal(a.accept, true);
    assert.equal(a.newDev, "0:41");
  });
  test("datadir was a mount point and is not now (at boot, the server not mounted: the empty directory beneath): FilesystemChanged", () => {
    const a = assess({ acceptedDev: undefined, view: fresh([]), known: new Set(["a.sqfs"]), mountPoint: { was: true, now: false } });
    assert.equal(a.accept, false);
    assert.equal(a.condition.reason, "FilesystemChanged");
    assert.match(a.condition.message, /no longer a mount point/);
    assert.equal(assess({ mountPoint: { was: true, now: false }, confirmed: true }).accept, true, "unless confirmed");
    assert.equal(assess({ mountPoint: { was: false, now: false } }).accept, true, "never was one: nothing to say");
  });
  test("the first scan ever: its device is remembered", () => {
    assert.equal(assess({ acceptedDev: undefined }).newDev, DEV);
  });
});

describe("massDisappearance: storage gone, or images deleted?", () => {
  const cases: [string, string[], string[], string[] | undefined, boolean][] = [
    // title, known, listed now, listed before, held?
    ["one of four deleted", four, ["a.sqfs", "b.sqfs", "c.sqfs"], four, false],
    ["two of four deleted (not more than half)", four, ["a.sqfs", "b.sqfs"], four, false],
    ["three of four gone", four, ["a.sqfs"], four, true],
    ["all gone, the directory empty", four, [], four, true],
    ["the only image deleted, the directory left empty: a deletion", ["a.sqfs"], [], ["a.sqfs"], false],
    ["one of two deleted, the other listed", ["a.sqfs", "b.sqfs"], ["b.sqfs"], ["a.sqfs", "b.sqfs"], false],
    ["all renamed at once (new names appeared): a change, not an outage", four, ["w.sqfs", "x.sqfs", "y.sqfs", "z.sqfs"], four, false],
    ["nothing known", [], [], [], false],
  ];
  for (const [title, known, names, before, held] of cases) {
    test(`${title}: ${held ? "held back" : "believed"}`, () => {
      const out = massDisappearance({ known: new Set(known), names: new Set(names), lastNames: before && new Set(before), share: 0.5 });
      assert.equal(out !== undefined, held);
    });
  }
});

describe("allowedUnder: what is done while a directory cannot be believed", () => {
  const d = dataset("coco");
  const actions: Action[] = [
    { kind: "mkdir", key: d.mountPoint, dataset: d.name, path: d.mountPoint },
    { kind: "mount", key: d.mountPoint, dataset: d.name, tier: "slow", source: d.imagePath, target: d.mountPoint, fsType: "squashfs" },
    { kind: "mount", key: d.mountPoint, dataset: d.name, tier: "cache", source: d.cachePath, target: d.mountPoint, fsType: "squashfs" },
    { kind: "unmount", key: d.mountPoint, dataset: d.name, tier: "slow", target: d.mountPoint, mountId: 1, device: "7:1", reason: "image removed" },
    { kind: "unmount", key: d.mountPoint, dataset: d.name, tier: "cache", target: d.mountPoint, mountId: 2, device: "7:2", reason: "dropped from cache" },
    { kind: "rmdir", key: d.mountPoint, path: d.mountPoint },
    { kind: "delete-file", key: d.cachePath, path: d.cachePath, reason: "belongs to no image" },
    { kind: "start-copy", key: d.mountPoint, dataset: d },
    { kind: "cancel-copy", key: d.mountPoint, dataset: d.name, reason: "image removed" },
  ];
  const kinds = (list: Action[]) => list.map((a) => `${a.kind}${"tier" in a ? `:${a.tier}` : ""}`);
  test("datadir held: only a finished copy's overmount (it moves readers off the failing server)", () => {
    assert.deepEqual(kinds(actions.filter((a) => allowedUnder({ datadir: true, cachedir: false }, a))), ["mount:cache"]);
  });
  test("cachedir held: nothing of the cache is deleted, started, mounted or unmounted", () => {
    assert.deepEqual(kinds(actions.filter((a) => allowedUnder({ datadir: false, cachedir: true }, a))), ["mkdir", "mount:slow", "unmount:slow", "rmdir", "cancel-copy"]);
  });
  test("no hold: everything", () => {
    assert.equal(actions.filter((a) => allowedUnder({ datadir: false, cachedir: false }, a)).length, actions.length);
  });
  test("applyHolds: once a step of a mount point is held, its later steps are too; other mount points go on", () => {
    const other = dataset("imagenet");
    const list: Action[] = [
      { kind: "unmount", key: d.mountPoint, dataset: d.name, tier: "cache", target: d.mountPoint, mountId: 2, device: "7:2", reason: "stale cached copy" },
      { kind: "mount", key: d.mountPoint, dataset: d.name, tier: "cache", source: d.cachePath, target: d.mountPoint, fsType: "squashfs" },
      { kind: "mount", key: other.mountPoint, dataset: other.name, tier: "cache", source: other.cachePath, target: other.mountPoint, fsType: "squashfs" },
    ];
    assert.deepEqual(
      applyHolds(list, { datadir: true, cachedir: false }).map((a) => a.key),
      [other.mountPoint],
    );
  });
});

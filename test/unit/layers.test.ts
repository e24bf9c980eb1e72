/** Which mounts are the daemon's own, and which file each stands for (plan/layers.ts). */
import assert from "node:assert/strict";
import path from "node:path";
import { describe, test } from "node:test";
import type { LoopDevice } from "../../src/observe/loops.js";
import { layerStacks, provisionalImages, relocateDetached } from "../../src/plan/layers.js";
import { CACHE, DATA, fileEntry, loopDevice, makeConfig, MNT, mountEntry, snapshot } from "./helpers.js";

const config = makeConfig();
const OLD_DEV = "0:39";
const withBacking = (l: LoopDevice, dev: string, ino: number): LoopDevice => ({ ...l, backing: { dev, ino } });

describe("relocateDetached: loop devices on a file system datadir was on, named from its detached root", () => {
  const loops = new Map([
    ["7:0", withBacking(loopDevice("loop0", "/alpha.sqfs"), OLD_DEV, 11)],
    ["7:1", withBacking(loopDevice("loop1", "/sub/beta.sqfs"), OLD_DEV, 12)],
    ["7:2", withBacking(loopDevice("loop2", "/alpha.sqfs"), "254:0", 13)],
    ["7:3", withBacking(loopDevice("loop3", path.join(DATA, "gamma.sqfs")), "0:40", 14)],
  ]);
  const out = relocateDetached(loops, new Set([OLD_DEV, "0:40"]), config);
  test("on one of datadir's devices: the image of datadir of that name", () => {
    assert.equal(out.get("7:0")?.backingFile, path.join(DATA, "alpha.sqfs"));
    assert.equal(out.get("7:1")?.backingFile, path.join(DATA, "beta.sqfs"), "datadir was a subdirectory of the detached mount");
  });
  test("on another device (a file of the root file system named /alpha.sqfs): not ours, left as it is", () => {
    assert.equal(out.get("7:2")?.backingFile, "/alpha.sqfs");
  });
  test("already under datadir: unchanged", () => {
    assert.equal(out.get("7:3")?.backingFile, path.join(DATA, "gamma.sqfs"));
  });
});

describe("layerStacks: a slow layer is its image only if it is the same file (inode)", () => {
  const target = path.join(MNT, "alpha");
  const loop = withBacking(loopDevice("loop0", path.join(DATA, "alpha.sqfs"), { majorMinor: "7:0" }), "0:40", 11);
  const snap = (ino: number) =>
    snapshot({ images: [fileEntry(DATA, "alpha.sqfs", { ino })], mounts: [mountEntry(1, 0, target, { majorMinor: "7:0" })], loops: new Map([["7:0", loop]]) });
  test("same inode: the image's layer", () => {
    assert.equal(layerStacks(snap(11), config).get(target)?.[0]?.deleted, false);
  });
  test("the same file, grown since it was attached (rewritten in place): to be attached again", () => {
    const grown = snapshot({
      images: [fileEntry(DATA, "alpha.sqfs", { ino: 11, size: 8192 })],
      mounts: [mountEntry(1, 0, target, { majorMinor: "7:0" })],
      loops: new Map([["7:0", { ...loop, sizeBytes: 4096 }]]),
    });
    assert.equal(layerStacks(grown, config).get(target)?.[0]?.deleted, true);
    assert.equal(layerStacks({ ...grown, images: [fileEntry(DATA, "alpha.sqfs", { ino: 11, size: 4096 + 100 })] }, config).get(target)?.[0]?.deleted, false, "a tail shorter than a sector is not seen by the device");
  });
  test("another inode at the same path (replaced by another client of the server, no ' (deleted)'): replaced", () => {
    const layer = layerStacks(snap(99), config).get(target)?.[0];
    assert.equal(layer?.tier, "slow");
    assert.equal(layer?.deleted, true);
  });
});

describe("provisionalImages: the datasets of a daemon started while datadir is away, from what is mounted", () => {
  test("each slow mount stands for its image, with its cached copy's size and mtime (so the copy stays valid)", () => {
    const s = snapshot({
      mounts: [
        mountEntry(1, 0, path.join(MNT, "alpha"), { majorMinor: "7:0" }),
        mountEntry(2, 1, path.join(MNT, "alpha"), { majorMinor: "7:1" }),
        mountEntry(3, 0, path.join(MNT, "beta"), { majorMinor: "7:2", fsType: "erofs" }),
        mountEntry(4, 0, path.join(MNT, "usb"), { majorMinor: "8:1", fsType: "vfat" }),
      ],
      loops: new Map([
        ["7:0", loopDevice("loop0", path.join(DATA, "alpha.sqfs"), { sizeBytes: 8192 })],
        ["7:1", loopDevice("loop1", path.join(CACHE, "alpha.sqfs"), { sizeBytes: 8192 })],
        ["7:2", loopDevice("loop2", path.join(DATA, "beta.erofs"), { sizeBytes: 4096 })],
      ]),
      cacheFiles: [fileEntry(CACHE, "alpha.sqfs", { size: 8000, mtimeMs: 1_700_000_000_000 })],
    });
    const { images, probes } = provisionalImages(s, config);
    assert.deepEqual(images.map((e) => [e.file, e.size, e.mtimeMs]), [
      ["alpha.sqfs", 8000, 1_700_000_000_000],
      ["beta.erofs", 4096, 0],
    ]);
    assert.deepEqual(probes.get("beta.erofs"), { ok: true, kind: "erofs" });
  });
});

import assert from "node:assert/strict";
import path from "node:path";
import { describe, test } from "node:test";
import type { FileEntry, Probe } from "../../src/observe/images.js";
import type { LoopDevice } from "../../src/observe/loops.js";
import type { MountEntry } from "../../src/observe/mountinfo.js";
import { catalogue, type Catalog, type Dataset } from "../../src/plan/catalog.js";
import { actionDataset, diff, type Action, type Problem, type TransferInfo } from "../../src/plan/diff.js";
import { layerStacks, mountedImages, type Layer } from "../../src/plan/layers.js";
import {
  CACHE,
  cacheLayer,
  catalogOf,
  DATA,
  dataset,
  fileEntry,
  foreignLayer,
  loopDevice,
  makeConfig,
  MNT,
  mountEntry,
  slowLayer,
  snapshot,
} from "./helpers.js";

const config = makeConfig();
const M = (name: string) => path.join(MNT, name);
const D = (file: string) => path.join(DATA, file);
const C = (file: string) => path.join(CACHE, file);

/** One line per action, as an operator would read the plan. */
function describeAction(a: Action): string {
  switch (a.kind) {
    case "mkdir":
      return `mkdir ${a.path}`;
    case "mount":
      return `mount ${a.tier} ${a.source} on ${a.target} (${a.fsType})`;
    case "unmount":
      return `unmount ${a.tier} #${a.mountId} from ${a.target} (${a.reason})`;
    case "rmdir":
      return `rmdir ${a.path}`;
    case "delete-file":
      return `delete ${a.path} (${a.reason})`;
    case "start-copy":
      return `start-copy ${a.dataset.name}`;
    case "cancel-copy":
      return `cancel-copy ${a.dataset} (${a.reason})`;
    case "harden":
      return `harden ${a.tier} #${a.mountId} on ${a.target}`;
  }
}

const transferOf = (d: Dataset, o: Partial<TransferInfo> = {}): TransferInfo => ({
  name: d.name,
  imageFile: d.imageFile,
  size: d.size,
  mtimeMs: d.mtimeMs,
  tmpPath: d.tmpPath,
  ...o,
});

interface Situation {
  datasets?: Dataset[];
  catalog?: Partial<Catalog>;
  stacks?: Record<string, Layer[]>;
  cacheFiles?: FileEntry[];
  cached?: string[];
  transfers?: TransferInfo[];
  frozen?: string[];
  admitted?: string[];
}

function plan(s: Situation): { actions: string[]; problems: Problem[]; raw: Action[] } {
  const catalog = catalogOf(s.datasets ?? [], s.catalog ?? {});
  const { actions, problems } = diff({
    config,
    catalog,
    stacks: new Map(Object.entries(s.stacks ?? {})),
    cacheFiles: s.cacheFiles ?? [],
    cached: new Set(s.cached ?? []),
    transfers: new Map((s.transfers ?? []).map((t) => [t.name, t])),
    frozen: new Set(s.frozen ?? []),
    ...(s.admitted ? { admitted: new Set(s.admitted) } : {}),
  });
  // Invariants of every plan: one key per mount point or cachedir file, and the action's dataset is the key's.
  for (const a of actions) {
    const underMnt = path.dirname(a.key) === MNT;
    assert.ok(underMnt || path.dirname(a.key) === CACHE, `key ${a.key} of ${describeAction(a)}`);
    const name = actionDataset(a);
    if (underMnt && name !== undefined) assert.equal(path.basename(a.key), name, `dataset of ${describeAction(a)}`);
  }
  return { actions: actions.map(describeAction), problems, raw: actions };
}

const coco = dataset("coco");
const cocoValid = dataset("coco", { cache: "valid" });
const cocoStale = dataset("coco", { cache: "stale" });

interface Case extends Situation {
  title: string;
  actions: string[];
  /** Mount points (keys) that must be reported as problems. */
  problems?: string[];
}

const cases: Case[] = [
  // --- A new image.
  {
    title: "new image, not chosen: mkdir, mount the slow image",
    datasets: [coco],
    actions: [`mkdir ${M("coco")}`, `mount slow ${D("coco.sqfs")} on ${M("coco")} (squashfs)`],
  },
  {
    title: "new EROFS image: mounted as erofs",
    datasets: [dataset("imnet", { imageFile: "imnet.img", kind: "erofs" })],
    actions: [`mkdir ${M("imnet")}`, `mount slow ${D("imnet.img")} on ${M("imnet")} (erofs)`],
  },
  {
    title: "new image, chosen: mkdir, mount slow, start the copy",
    datasets: [coco],
    cached: ["coco"],
    actions: [`mkdir ${M("coco")}`, `mount slow ${D("coco.sqfs")} on ${M("coco")} (squashfs)`, "start-copy coco"],
  },
  {
    title: "chosen but not admitted this tick (no free space yet): no copy",
    datasets: [coco],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs")] },
    cached: ["coco"],
    admitted: [],
    actions: [],
  },
  {
    title: "chosen without a copy: start the copy, the slow mount stays",
    datasets: [coco],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs")] },
    cached: ["coco"],
    actions: ["start-copy coco"],
  },
  {
    title: "chosen, copy already running: nothing",
    datasets: [coco],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs")] },
    cached: ["coco"],
    transfers: [transferOf(coco)],
    cacheFiles: [fileEntry(CACHE, path.basename(coco.tmpPath))],
    actions: [],
  },
  // --- Cached copies.
  {
    title: "chosen with a valid copy: mount the copy over the slow image",
    datasets: [cocoValid],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs")] },
    cacheFiles: [fileEntry(CACHE, "coco.sqfs")],
    cached: ["coco"],
    actions: [`mount cache ${C("coco.sqfs")} on ${M("coco")} (squashfs)`],
  },
  {
    title: "already right, cached: nothing to do (a restart re-does nothing)",
    datasets: [cocoValid],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs"), cacheLayer(2, "coco.sqfs")] },
    cacheFiles: [fileEntry(CACHE, "coco.sqfs")],
    cached: ["coco"],
    actions: [],
  },
  {
    title: "already right, slow only: nothing to do",
    datasets: [coco],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs")] },
    actions: [],
  },
  {
    title: "not chosen but cached: lazy-unmount the cache layer, then delete the copy",
    datasets: [cocoValid],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs"), cacheLayer(2, "coco.sqfs")] },
    cacheFiles: [fileEntry(CACHE, "coco.sqfs")],
    actions: [`unmount cache #2 from ${M("coco")} (dropped from cache)`, `delete ${C("coco.sqfs")} (dropped from cache)`],
  },
  {
    title: "not chosen, valid copy not mounted: delete it",
    datasets: [cocoValid],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs")] },
    cacheFiles: [fileEntry(CACHE, "coco.sqfs")],
    actions: [`delete ${C("coco.sqfs")} (dropped from cache)`],
  },
  {
    title: "stale copy mounted, still chosen: unmount it, delete it, copy again",
    datasets: [cocoStale],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs"), cacheLayer(2, "coco.sqfs")] },
    cacheFiles: [fileEntry(CACHE, "coco.sqfs")],
    cached: ["coco"],
    actions: [`unmount cache #2 from ${M("coco")} (stale cached copy)`, `delete ${C("coco.sqfs")} (stale cached copy)`, "start-copy coco"],
  },
  {
    title: "stale copy, not chosen: unmount and delete, no copy",
    datasets: [cocoStale],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs"), cacheLayer(2, "coco.sqfs")] },
    cacheFiles: [fileEntry(CACHE, "coco.sqfs")],
    actions: [`unmount cache #2 from ${M("coco")} (stale cached copy)`, `delete ${C("coco.sqfs")} (stale cached copy)`],
  },
  {
    title: "image replaced under its mounts: unmount the stack from the top, mount the new image, drop the stale copy, copy again",
    datasets: [cocoStale],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs", true), cacheLayer(2, "coco.sqfs")] },
    cacheFiles: [fileEntry(CACHE, "coco.sqfs")],
    cached: ["coco"],
    actions: [
      `unmount cache #2 from ${M("coco")} (stale cached copy)`,
      `unmount slow #1 from ${M("coco")} (backing file deleted or replaced)`,
      `mount slow ${D("coco.sqfs")} on ${M("coco")} (squashfs)`,
      `delete ${C("coco.sqfs")} (stale cached copy)`,
      "start-copy coco",
    ],
  },
  {
    title: "the mounted copy was deleted by someone: unmount it, copy again if chosen",
    datasets: [coco],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs"), cacheLayer(2, "coco.sqfs", true)] },
    cached: ["coco"],
    actions: [`unmount cache #2 from ${M("coco")} (backing file deleted or replaced)`, "start-copy coco"],
  },
  {
    title: "a second slow mount on top: unmount the extra one",
    datasets: [coco],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs"), slowLayer(2, "coco.sqfs")] },
    actions: [`unmount slow #2 from ${M("coco")} (replaced)`],
  },
  // --- Removed images.
  {
    title: "image removed: unmount the stack from the top, rmdir, delete its copy",
    stacks: { [M("old")]: [slowLayer(1, "old.sqfs", true), cacheLayer(2, "old.sqfs")] },
    cacheFiles: [fileEntry(CACHE, "old.sqfs")],
    actions: [
      `unmount cache #2 from ${M("old")} (image removed)`,
      `unmount slow #1 from ${M("old")} (image removed)`,
      `rmdir ${M("old")}`,
      `delete ${C("old.sqfs")} (belongs to no image)`,
    ],
  },
  {
    title: "copy running for an image that was removed: cancel it",
    transfers: [transferOf(dataset("old"))],
    actions: ["cancel-copy old (image removed)"],
  },
  // --- What is not ours.
  {
    title: "a foreign mount on a dataset's mount point: untouched, reported",
    datasets: [coco],
    stacks: { [M("coco")]: [foreignLayer(1)] },
    cached: ["coco"],
    actions: [],
    problems: [M("coco")],
  },
  {
    title: "a foreign mount over our slow mount: nothing touched, reported",
    datasets: [cocoValid],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs"), foreignLayer(2)] },
    cacheFiles: [fileEntry(CACHE, "coco.sqfs")],
    actions: [],
    problems: [M("coco")],
  },
  {
    title: "a foreign mount at a name no dataset has (a USB stick under /media): untouched, not even reported",
    stacks: { [M("usbstick")]: [foreignLayer(1)] },
    actions: [],
  },
  {
    title: "a foreign mount over ours at a removed name: nothing unmounted, reported",
    stacks: { [M("old")]: [slowLayer(1, "old.sqfs"), foreignLayer(2)] },
    actions: [],
    problems: [M("old")],
  },
  {
    title: "ours over a foreign mount at a removed name: ours unmounted, the foreign mount and the directory stay",
    stacks: { [M("old")]: [foreignLayer(1), slowLayer(2, "old.sqfs")] },
    actions: [`unmount slow #2 from ${M("old")} (image removed)`],
    problems: [M("old")],
  },
  // --- cachedir clean-up.
  {
    title: "an orphan file in cachedir is deleted",
    datasets: [coco],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs")] },
    cacheFiles: [fileEntry(CACHE, "junk.bin")],
    actions: [`delete ${C("junk.bin")} (belongs to no image)`],
  },
  {
    title: "a partial copy left by a crash (no running copy) is deleted",
    datasets: [coco],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs")] },
    cacheFiles: [fileEntry(CACHE, path.basename(coco.tmpPath))],
    actions: [`delete ${coco.tmpPath} (belongs to no image)`],
  },
  {
    title: "a partial copy left by a crash is left to the copy that starts now (which removes it itself)",
    datasets: [coco],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs")] },
    cacheFiles: [fileEntry(CACHE, path.basename(coco.tmpPath))],
    cached: ["coco"],
    actions: ["start-copy coco"],
  },
  {
    title: "directories and symlinks in cachedir are not ours to delete",
    cacheFiles: [fileEntry(CACHE, "lost+found", { type: "directory" }), fileEntry(CACHE, "link", { type: "symlink" }), fileEntry(CACHE, "fifo", { type: "other" })],
    actions: [],
  },
  // --- Pending and frozen datasets.
  {
    title: "pending (image still changing): its mounts and copy are left exactly as they are",
    catalog: { pending: new Set(["coco"]), pendingFiles: new Set(["coco.sqfs"]) },
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs"), cacheLayer(2, "coco.sqfs")] },
    cacheFiles: [fileEntry(CACHE, "coco.sqfs")],
    actions: [],
  },
  {
    title: "pending with a copy running: the copy of the changing image is cancelled, nothing else",
    catalog: { pending: new Set(["coco"]), pendingFiles: new Set(["coco.sqfs"]) },
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs")] },
    transfers: [transferOf(coco)],
    cacheFiles: [fileEntry(CACHE, path.basename(coco.tmpPath))],
    actions: ["cancel-copy coco (image changing)"],
  },
  {
    title: "frozen (back-off after a failure), chosen and unmounted: left alone",
    datasets: [coco],
    cached: ["coco"],
    frozen: ["coco"],
    actions: [],
  },
  {
    title: "frozen, cached but no longer chosen: its mounts and copy are left alone",
    datasets: [cocoValid],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs"), cacheLayer(2, "coco.sqfs")] },
    cacheFiles: [fileEntry(CACHE, "coco.sqfs")],
    frozen: ["coco"],
    actions: [],
  },
  // --- Copies that no longer make sense.
  {
    title: "copy running for a dataset no longer chosen: cancel it",
    datasets: [coco],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs")] },
    transfers: [transferOf(coco)],
    actions: ["cancel-copy coco (no longer chosen)"],
  },
  {
    title: "copy running of an older version of the image: cancel it (a new copy starts next tick)",
    datasets: [coco],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs")] },
    cached: ["coco"],
    transfers: [transferOf(coco, { mtimeMs: coco.mtimeMs - 60_000 })],
    actions: ["cancel-copy coco (image changed)"],
  },
  {
    title: "copy running of another size of the image: cancel it",
    datasets: [coco],
    stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs")] },
    cached: ["coco"],
    transfers: [transferOf(coco, { size: coco.size + 1 })],
    actions: ["cancel-copy coco (image changed)"],
  },
  {
    title: "copy running of another image file that had the name: cancel it",
    datasets: [dataset("coco", { imageFile: "coco.2014.sqfs" })],
    stacks: { [M("coco")]: [slowLayer(1, "coco.2014.sqfs")] },
    cached: ["coco"],
    transfers: [transferOf(dataset("coco", { imageFile: "coco.2017.sqfs" }))],
    actions: ["cancel-copy coco (image changed)"],
  },
];

describe("diff: observed state + wanted state -> actions, as SPEC.md reads", () => {
  for (const c of cases) {
    test(c.title, () => {
      const result = plan(c);
      assert.deepEqual(result.actions, c.actions);
      assert.deepEqual(result.problems.map((p) => p.key).sort(), [...(c.problems ?? [])].sort());
      for (const p of result.problems) assert.match(p.message, /not ours/);
    });
  }

  test("a cache layer without the slow layer under it: rebuilt bottom up (slow, then cache)", () => {
    const { raw } = plan({ datasets: [cocoValid], stacks: { [M("coco")]: [cacheLayer(2, "coco.sqfs")] }, cached: ["coco"] });
    assert.deepEqual(
      raw.map((a) => (a.kind === "unmount" || a.kind === "mount" ? `${a.kind} ${a.tier}` : a.kind)),
      ["unmount cache", "mount slow", "mount cache"],
    );
  });

  test("datasets are independent: each gets its own key, one's actions do not depend on another's", () => {
    const imnet = dataset("imnet", { cache: "valid" });
    const alone = plan({ datasets: [coco], cached: ["coco"] }).actions;
    const together = plan({
      datasets: [coco, imnet],
      stacks: { [M("imnet")]: [slowLayer(1, "imnet.sqfs"), cacheLayer(2, "imnet.sqfs")] },
      cacheFiles: [fileEntry(CACHE, "imnet.sqfs")],
      cached: ["coco"],
    }).raw;
    assert.deepEqual(together.filter((a) => a.key === M("coco")).map(describeAction), alone);
    assert.deepEqual(
      together.filter((a) => a.key === M("imnet")).map(describeAction),
      [`unmount cache #2 from ${M("imnet")} (dropped from cache)`, `delete ${C("imnet.sqfs")} (dropped from cache)`],
    );
  });

  test("start-copy carries the dataset to copy", () => {
    const { raw } = plan({ datasets: [coco], stacks: { [M("coco")]: [slowLayer(1, "coco.sqfs")] }, cached: ["coco"] });
    const start = raw.find((a) => a.kind === "start-copy");
    assert.ok(start && start.kind === "start-copy");
    assert.deepEqual(start.dataset, coco);
  });
});

/**
 * catalogue + layers + diff, from one machine snapshot: what the daemon's
 * tick computes. Mounts are built as mountinfo shows them.
 */
describe("catalogue then diff, from a snapshot of the machine", () => {
  const NOW = 1_700_000_100_000;
  const OLD = NOW - 3600_000;
  const SQUASHFS: Probe = { ok: true, kind: "squashfs" };

  interface Machine {
    images: FileEntry[];
    cacheFiles?: FileEntry[];
    /** Mounts under mountdir, bottom first per mount point: [mount point, loop device]. */
    mounts?: [string, LoopDevice][];
    transfers?: TransferInfo[];
    cached?: string[];
  }

  function tick(m: Machine, previousImages?: FileEntry[]) {
    const loops = new Map<string, LoopDevice>();
    const mounts: MountEntry[] = [];
    const top = new Map<string, number>();
    let id = 100;
    for (const [mountPoint, loop] of m.mounts ?? []) {
      loops.set(loop.majorMinor, loop);
      const parent = top.get(mountPoint) ?? 1;
      mounts.push(mountEntry(id, parent, mountPoint, { majorMinor: loop.majorMinor, source: `/dev/${loop.name}` }));
      top.set(mountPoint, id);
      id++;
    }
    const probes = new Map(m.images.filter((e) => e.type === "file").map((e) => [e.file, SQUASHFS]));
    const snap = snapshot({ now: NOW, images: m.images, probes, cacheFiles: m.cacheFiles ?? [], mounts, loops });
    const previous = previousImages && snapshot({ now: NOW - 5000, images: previousImages, probes });
    const stacks = layerStacks(snap, config);
    const catalog = catalogue(snap, previous, config, mountedImages(stacks));
    const result = diff({
      config,
      catalog,
      stacks,
      cacheFiles: snap.cacheFiles,
      cached: new Set(m.cached ?? []),
      transfers: new Map((m.transfers ?? []).map((t) => [t.name, t])),
      frozen: new Set(),
    });
    return { catalog, actions: result.actions.map(describeAction), problems: result.problems };
  }

  test("a restart over a cached dataset: everything adopted, nothing re-done", () => {
    const image = fileEntry(DATA, "coco.sqfs", { mtimeMs: OLD, size: 5000 });
    const copy = fileEntry(CACHE, "coco.sqfs", { mtimeMs: OLD, size: 5000 });
    const r = tick({
      images: [image],
      cacheFiles: [copy],
      mounts: [
        [M("coco"), loopDevice("loop0", D("coco.sqfs"))],
        [M("coco"), loopDevice("loop1", C("coco.sqfs"))],
      ],
      cached: ["coco"],
    });
    assert.deepEqual(r.actions, []);
    assert.deepEqual(r.problems, []);
  });

  test("coco.2014 appears next to the mounted coco.2017: coco.2017 keeps the name, coco.2014 is refused", () => {
    const y2017 = fileEntry(DATA, "coco.2017.sqfs", { mtimeMs: OLD });
    const y2014 = fileEntry(DATA, "coco.2014.sqfs", { mtimeMs: OLD });
    const r = tick({ images: [y2014, y2017], mounts: [[M("coco"), loopDevice("loop0", D("coco.2017.sqfs"))]] }, [y2017]);
    assert.deepEqual(r.actions, []);
    assert.deepEqual(
      r.catalog.refusals.map((x) => x.file),
      ["coco.2014.sqfs"],
    );
  });

  test(
    "while a colliding coco.2014 is still being written, the mounted and cached coco.2017 is not disturbed",
    () => {
      const y2017 = fileEntry(DATA, "coco.2017.sqfs", { mtimeMs: OLD, size: 5000 });
      const copy = fileEntry(CACHE, "coco.2017.sqfs", { mtimeMs: OLD, size: 5000 });
      const writing = fileEntry(DATA, "coco.2014.sqfs", { mtimeMs: NOW - 500, size: 100 });
      const r = tick(
        {
          images: [writing, y2017],
          cacheFiles: [copy],
          mounts: [
            [M("coco"), loopDevice("loop0", D("coco.2017.sqfs"))],
            [M("coco"), loopDevice("loop1", C("coco.2017.sqfs"))],
          ],
          cached: ["coco"],
        },
        [{ ...writing, size: 50 }, y2017],
      );
      assert.deepEqual(r.actions, []);
    },
  );
});

describe("diff: empty mount points the daemon made", () => {
  const run = (datasets: Dataset[], ownedDirs: string[]) =>
    diff({ config, catalog: catalogOf(datasets), stacks: new Map(), cacheFiles: [], cached: new Set(), transfers: new Map(), frozen: new Set(), ownedDirs: new Set(ownedDirs) }).actions.map(describeAction);
  test("one of ours, left empty after its image went away, is removed", () => {
    assert.deepEqual(run([], [M("gamma")]), [`rmdir ${M("gamma")}`]);
  });
  test("one of ours that a dataset still wants is kept (and mounted)", () => {
    assert.deepEqual(run([dataset("gamma")], [M("gamma")]), [`mkdir ${M("gamma")}`, `mount slow ${D("gamma.sqfs")} on ${M("gamma")} (squashfs)`]);
  });
  test("a directory the daemon did not make is never removed", () => {
    assert.deepEqual(run([], []), []);
  });
});

describe("diff: mounts adopted from the original, made with a plain `mount FILE DIR` (no nosuid,nodev)", () => {
  /** A layer as the original leaves it: mountinfo's options "ro,relatime". */
  const plain = (l: Layer): Layer => ({ ...l, entry: { ...l.entry, options: "ro,relatime" } });
  const run = (stack: Layer[], cached: string[] = [], cache: Dataset["cache"] = "valid") =>
    diff({ config, catalog: catalogOf([dataset("coco", { cache })]), stacks: new Map([[M("coco"), stack]]), cacheFiles: [], cached: new Set(cached), transfers: new Map(), frozen: new Set() }).actions.map(describeAction);
  test("a right stack whose top lacks them: hardened in place, nothing else", () => {
    assert.deepEqual(run([plain(slowLayer(10, "coco.sqfs"))], [], "none"), [`harden slow #10 on ${M("coco")}`]);
    assert.deepEqual(run([plain(slowLayer(10, "coco.sqfs")), plain(cacheLayer(11, "coco.sqfs"))], ["coco"]), [`harden cache #11 on ${M("coco")}`], "only the top can be reached by its path");
  });
  test("one of ours, with the flags: nothing to do", () => {
    assert.deepEqual(run([slowLayer(10, "coco.sqfs"), cacheLayer(11, "coco.sqfs")], ["coco"]), []);
  });
  test("a stack that changes this tick is not hardened now (the next tick finds its new top)", () => {
    assert.deepEqual(run([plain(slowLayer(10, "coco.sqfs")), plain(cacheLayer(11, "coco.sqfs"))]), [`unmount cache #11 from ${M("coco")} (dropped from cache)`, `delete ${C("coco.sqfs")} (dropped from cache)`]);
    assert.deepEqual(run([plain(slowLayer(10, "coco.sqfs"))], ["coco"]), [`mount cache ${C("coco.sqfs")} on ${M("coco")} (squashfs)`]);
  });
  test("a foreign mount is never hardened", () => {
    const foreign = { ...foreignLayer(12), entry: { ...foreignLayer(12).entry, options: "rw" } };
    assert.ok(!run([slowLayer(10, "coco.sqfs"), foreign], [], "none").some((a) => a.startsWith("harden")));
  });
});

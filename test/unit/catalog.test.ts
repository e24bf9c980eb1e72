import assert from "node:assert/strict";
import path from "node:path";
import { describe, test } from "node:test";
import type { Config } from "../../src/config.js";
import type { FileEntry, Probe } from "../../src/observe/images.js";
import type { Snapshot } from "../../src/observe/snapshot.js";
import { catalogue, sameVersion, type Catalog } from "../../src/plan/catalog.js";
import { CACHE, DATA, fileEntry, makeConfig, MNT, snapshot, type EntryOptions } from "./helpers.js";

const NOW = 1_700_000_100_000;
/** An image untouched for an hour. */
const OLD = NOW - 3600_000;
const config = makeConfig({ interval: 5 });

const SQUASHFS: Probe = { ok: true, kind: "squashfs" };
const EROFS: Probe = { ok: true, kind: "erofs" };

/** A file of datadir and what probing it found (squashfs unless told; none for non-files). */
interface Img {
  entry: FileEntry;
  probe?: Probe;
}

function img(file: string, o: EntryOptions & { probe?: Probe | null } = {}): Img {
  const entry = fileEntry(DATA, file, { mtimeMs: OLD, ...o });
  const probe = o.probe === null ? undefined : (o.probe ?? (entry.type === "file" ? SQUASHFS : undefined));
  return probe ? { entry, probe } : { entry };
}

function snap(images: readonly Img[], o: { now?: number; cacheFiles?: FileEntry[] } = {}): Snapshot {
  const probes = new Map<string, Probe>();
  for (const i of images) if (i.probe) probes.set(i.entry.file, i.probe);
  return snapshot({ now: o.now ?? NOW, images: images.map((i) => i.entry), probes, cacheFiles: o.cacheFiles ?? [] });
}

/** A previous tick's snapshot that saw these very entries. */
const sawBefore = (images: readonly Img[]): Snapshot => snap(images, { now: NOW - 5000 });

function run(images: readonly Img[], o: { previous?: Snapshot; mounted?: string[]; cacheFiles?: FileEntry[]; config?: Config } = {}): Catalog {
  return catalogue(snap(images, o), o.previous, o.config ?? config, new Set(o.mounted ?? []));
}

/** dataset name -> image file, sorted, for compact comparisons. */
const served = (c: Catalog): Record<string, string> => Object.fromEntries([...c.datasets.values()].map((d) => [d.name, d.imageFile]).sort());
const refused = (c: Catalog): string[] => c.refusals.map((r) => r.file).sort();
const reasonFor = (c: Catalog, file: string): string => {
  const r = c.refusals.find((x) => x.file === file);
  assert.ok(r, `expected a refusal for ${file}; got ${JSON.stringify(c.refusals)}`);
  return r.reason;
};

describe("catalogue: a new image becomes a dataset", () => {
  test("an old squashfs image: dataset named up to the first dot, mounted at mountdir/<name>, its copy in cachedir", () => {
    const c = run([img("coco.sqfs", { size: 123456 })]);
    assert.deepEqual(served(c), { coco: "coco.sqfs" });
    const d = c.datasets.get("coco");
    assert.ok(d);
    assert.equal(d.imagePath, path.join(DATA, "coco.sqfs"));
    assert.equal(d.mountPoint, path.join(MNT, "coco"));
    assert.equal(d.cachePath, path.join(CACHE, "coco.sqfs"));
    assert.equal(d.size, 123456);
    assert.equal(d.mtimeMs, OLD);
    assert.equal(d.kind, "squashfs");
    assert.equal(d.cache, "none");
    assert.deepEqual(c.refusals, []);
    assert.deepEqual([...c.pending], []);
    assert.equal(c.nameOfFile.get("coco.sqfs"), "coco");
  });

  test("an EROFS image is mounted as erofs, whatever its extension", () => {
    const c = run([img("imnet.img", { probe: EROFS })]);
    assert.equal(c.datasets.get("imnet")?.kind, "erofs");
  });

  test("images are recognised by their magic, not their extension: a squashfs image named .dat is served", () => {
    assert.deepEqual(served(run([img("weird.dat")])), { weird: "weird.dat" });
  });

  test("spaces and non-ASCII names work", () => {
    const c = run([img("my data.sqfs"), img("données.sqfs")]);
    assert.deepEqual(served(c), { "my data": "my data.sqfs", données: "données.sqfs" });
    assert.equal(c.datasets.get("my data")?.mountPoint, path.join(MNT, "my data"));
  });

  test("naming = strip-extension removes only the last extension", () => {
    const c = run([img("coco.2017.sqfs")], { config: makeConfig({ naming: "strip-extension" }) });
    assert.deepEqual(served(c), { "coco.2017": "coco.2017.sqfs" });
  });
});

describe("catalogue: an image is mounted only once stable for a full tick", () => {
  const cases: { title: string; image: (o: EntryOptions) => Img; previous: (i: Img) => Snapshot | undefined; pending: boolean }[] = [
    { title: "first tick, mtime an hour old: served (a restart adopts at once)", image: (o) => img("coco.sqfs", o), previous: () => undefined, pending: false },
    { title: "first tick, mtime 1 s old: pending", image: (o) => img("coco.sqfs", { ...o, mtimeMs: NOW - 1000 }), previous: () => undefined, pending: true },
    { title: "first tick, mtime exactly one interval old: served", image: (o) => img("coco.sqfs", { ...o, mtimeMs: NOW - 5000 }), previous: () => undefined, pending: false },
    { title: "new since the previous tick, mtime 1 s old: pending", image: (o) => img("coco.sqfs", { ...o, mtimeMs: NOW - 1000 }), previous: () => sawBefore([]), pending: true },
    { title: "new since the previous tick but an hour old (an atomic mv): served", image: (o) => img("coco.sqfs", o), previous: () => sawBefore([]), pending: false },
    {
      title: "unchanged since the previous tick, even if its mtime is recent: served",
      image: (o) => img("coco.sqfs", { ...o, mtimeMs: NOW - 1000 }),
      previous: (i) => sawBefore([i]),
      pending: false,
    },
    {
      title: "grew since the previous tick (a non-atomic copy in progress): pending",
      image: (o) => img("coco.sqfs", { ...o, size: 8192, ino: 1 }),
      previous: () => sawBefore([img("coco.sqfs", { size: 4096, ino: 1 })]),
      pending: true,
    },
    {
      title: "mtime changed since the previous tick: pending",
      image: (o) => img("coco.sqfs", { ...o, ino: 2, mtimeMs: NOW - 1000 }),
      previous: () => sawBefore([img("coco.sqfs", { ino: 2, mtimeMs: OLD })]),
      pending: true,
    },
    {
      title: "replaced by another file (new inode) since the previous tick: pending",
      image: (o) => img("coco.sqfs", { ...o, ino: 4 }),
      previous: () => sawBefore([img("coco.sqfs", { ino: 3 })]),
      pending: true,
    },
  ];
  for (const c of cases) {
    test(c.title, () => {
      const image = c.image({});
      const cat = run([image], { previous: c.previous(image) });
      if (c.pending) {
        assert.deepEqual(served(cat), {});
        assert.deepEqual([...cat.pending], ["coco"]);
        assert.deepEqual([...cat.pendingFiles], ["coco.sqfs"]);
        assert.deepEqual(cat.refusals, [], "an image still being written is not an error");
        assert.equal(cat.nameOfFile.get("coco.sqfs"), "coco", "reads of it are still attributed");
      } else {
        assert.deepEqual(served(cat), { coco: "coco.sqfs" });
        assert.deepEqual([...cat.pending], []);
      }
    });
  }

  test("a half-written file is pending, not refused, even if its header is not an image yet", () => {
    const cat = run([img("coco.sqfs", { mtimeMs: NOW - 100, probe: { ok: false, reason: "truncated squashfs superblock" } })]);
    assert.deepEqual([...cat.pending], ["coco"]);
    assert.deepEqual(cat.refusals, []);
  });
});

describe("catalogue: refusals, one clear reason each, never stopping the others", () => {
  const cases: { title: string; image: Img; reason: RegExp }[] = [
    { title: "a directory", image: img("subdir", { type: "directory" }), reason: /directory/ },
    { title: "a symbolic link", image: img("link.sqfs", { type: "symlink" }), reason: /symbolic link/ },
    { title: "a FIFO, socket or device", image: img("fifo", { type: "other" }), reason: /not a regular file/ },
    { title: "a text file (bad magic)", image: img("notes.txt", { probe: { ok: false, reason: "not a squashfs or EROFS image (bad magic)" } }), reason: /bad magic/ },
    { title: "a zero-byte file", image: img("empty.sqfs", { size: 0, probe: { ok: false, reason: "empty file" } }), reason: /empty file/ },
    { title: "a truncated image", image: img("short.sqfs", { probe: { ok: false, reason: "truncated squashfs superblock" } }), reason: /truncated/ },
    { title: "a regular file nobody probed", image: img("unprobed.sqfs", { probe: null }), reason: /not probed/ },
    { title: "a name with control characters", image: img("bad\u0001name.sqfs"), reason: /control characters/ },
  ];
  for (const c of cases) {
    test(`${c.title} is refused, and the good image next to it is served`, () => {
      const cat = run([c.image, img("good.sqfs")]);
      assert.deepEqual(served(cat), { good: "good.sqfs" });
      assert.deepEqual(refused(cat), [c.image.entry.file]);
      assert.match(reasonFor(cat, c.image.entry.file), c.reason);
      assert.ok(!reasonFor(cat, c.image.entry.file).includes("\n"), "one line");
      assert.deepEqual([...cat.pending], []);
    });
  }

  test("hidden files (editors' and copy tools' temporaries) are ignored silently", () => {
    const cat = run([img(".coco.sqfs.swp", { probe: { ok: false, reason: "bad magic" } }), img(".rsync.tmp", { mtimeMs: NOW })]);
    assert.deepEqual(served(cat), {});
    assert.deepEqual(cat.refusals, []);
    assert.deepEqual([...cat.pending], []);
    assert.equal(cat.nameOfFile.size, 0);
  });

  test("a refusal's signature is stable while the file is unchanged and changes with it (logged once, retried on change)", () => {
    const bad = (o: EntryOptions) => img("notes.txt", { ino: 77, probe: { ok: false, reason: "bad magic" }, ...o });
    const sig = (i: Img) => run([i]).refusals[0]?.signature;
    assert.equal(sig(bad({})), sig(bad({})));
    assert.notEqual(sig(bad({})), sig(bad({ size: 9999 })));
    assert.notEqual(sig(bad({})), sig(bad({ mtimeMs: OLD + 1000 })));
    assert.notEqual(sig(bad({})), sig(bad({ ino: 78 })));
  });

  test("a refused file that becomes a good image is served", () => {
    assert.deepEqual(refused(run([img("coco.sqfs", { probe: { ok: false, reason: "bad magic" } })])), ["coco.sqfs"]);
    const cat = run([img("coco.sqfs")]);
    assert.deepEqual(served(cat), { coco: "coco.sqfs" });
    assert.deepEqual(cat.refusals, []);
  });
});

describe("catalogue: two images with one mount name (coco.2014.sqfs, coco.2017.sqfs)", () => {
  const y2014 = img("coco.2014.sqfs");
  const y2017 = img("coco.2017.sqfs");

  test("neither mounted: the lexicographically first keeps the name; the other is refused naming both", () => {
    const cat = run([y2014, y2017]);
    assert.deepEqual(served(cat), { coco: "coco.2014.sqfs" });
    assert.deepEqual(refused(cat), ["coco.2017.sqfs"]);
    const reason = reasonFor(cat, "coco.2017.sqfs");
    assert.ok(reason.includes("coco.2014.sqfs") && reason.includes('"coco"'), reason);
    assert.ok(!reason.includes("\n"), "one line");
  });

  test("the mounted one keeps the name, even if it sorts later", () => {
    const cat = run([y2014, y2017], { mounted: [y2017.entry.path] });
    assert.deepEqual(served(cat), { coco: "coco.2017.sqfs" });
    assert.deepEqual(refused(cat), ["coco.2014.sqfs"]);
    assert.ok(reasonFor(cat, "coco.2014.sqfs").includes("coco.2017.sqfs"));
  });

  test("the lexicographically first wins whatever order the directory listing came in", () => {
    const cat = run([y2017, y2014]);
    assert.deepEqual(served(cat), { coco: "coco.2014.sqfs" });
  });

  test("once the conflict is gone, the refused image is served again", () => {
    const cat = run([y2017]);
    assert.deepEqual(served(cat), { coco: "coco.2017.sqfs" });
    assert.deepEqual(cat.refusals, []);
  });

  test("a refused image (bad magic) takes no part in the conflict", () => {
    const cat = run([img("coco.2014.sqfs", { probe: { ok: false, reason: "bad magic" } }), y2017]);
    assert.deepEqual(served(cat), { coco: "coco.2017.sqfs" });
    assert.deepEqual(refused(cat), ["coco.2014.sqfs"]);
    assert.match(reasonFor(cat, "coco.2014.sqfs"), /bad magic/);
  });

  test("the loser's conflict refusal changes signature when the loser changes", () => {
    const sig = (size: number) => run([y2014, img("coco.2017.sqfs", { ino: 5, size })]).refusals[0]?.signature;
    assert.ok(sig(1));
    assert.equal(sig(1), sig(1));
    assert.notEqual(sig(1), sig(2));
  });

  test("naming = strip-extension: no conflict, two datasets", () => {
    const cat = run([y2014, y2017], { config: makeConfig({ naming: "strip-extension" }) });
    assert.deepEqual(served(cat), { "coco.2014": "coco.2014.sqfs", "coco.2017": "coco.2017.sqfs" });
    assert.deepEqual(cat.refusals, []);
  });

  test("the dataset's cached copy is the winner's file", () => {
    const cat = run([y2014, y2017], { mounted: [y2017.entry.path] });
    assert.equal(cat.datasets.get("coco")?.cachePath, path.join(CACHE, "coco.2017.sqfs"));
  });
});

describe("catalogue: the cached copy's state", () => {
  const image = (o: EntryOptions = {}) => img("coco.sqfs", { size: 1_000_000, mtimeMs: 1_699_999_000_500, ...o });
  const copy = (o: EntryOptions = {}) => fileEntry(CACHE, "coco.sqfs", { size: 1_000_000, mtimeMs: 1_699_999_000_500, ...o });
  const cases: { title: string; cacheFiles: FileEntry[]; cache: "none" | "valid" | "stale" }[] = [
    { title: "no copy", cacheFiles: [], cache: "none" },
    { title: "same size and mtime", cacheFiles: [copy()], cache: "valid" },
    { title: "same size, mtime equal to the second (sub-second precision lost)", cacheFiles: [copy({ mtimeMs: 1_699_999_000_000 })], cache: "valid" },
    { title: "other size", cacheFiles: [copy({ size: 999_999 })], cache: "stale" },
    { title: "mtime a second off", cacheFiles: [copy({ mtimeMs: 1_699_999_001_500 })], cache: "stale" },
    { title: "a directory of that name is not a copy", cacheFiles: [copy({ type: "directory" })], cache: "none" },
    { title: "other files in cachedir do not matter", cacheFiles: [fileEntry(CACHE, "imnet.sqfs")], cache: "none" },
  ];
  for (const c of cases) {
    test(`${c.title}: ${c.cache}`, () => {
      assert.equal(run([image()], { cacheFiles: c.cacheFiles }).datasets.get("coco")?.cache, c.cache);
    });
  }
});

describe("sameVersion: size and mtime to the second, as rsync -t compares", () => {
  const cases: [string, { size: number; mtimeMs: number }, { size: number; mtimeMs: number }, boolean][] = [
    ["identical", { size: 1, mtimeMs: 5000 }, { size: 1, mtimeMs: 5000 }, true],
    ["same second", { size: 1, mtimeMs: 5001 }, { size: 1, mtimeMs: 5999 }, true],
    ["next second", { size: 1, mtimeMs: 5999 }, { size: 1, mtimeMs: 6000 }, false],
    ["other size", { size: 1, mtimeMs: 5000 }, { size: 2, mtimeMs: 5000 }, false],
  ];
  for (const [title, a, b, same] of cases) {
    test(title, () => {
      assert.equal(sameVersion(a, b), same);
      assert.equal(sameVersion(b, a), same);
    });
  }
});

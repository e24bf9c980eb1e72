import assert from "node:assert/strict";
import { mkdir, readFile, realpath, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { configWarnings, parseConfigText, resolveDirectories, validateConfig, type RawConfig } from "../../src/config.js";
import { compatText, originalCapacity } from "../../src/commands/config.js";
import { assertRejectsUsage, assertUsageError, FIXTURES, GiB, makeConfig, MiB, tempDir, TiB } from "./helpers.js";

const SOURCE = "/etc/scratch_manager.conf";

describe("parseConfigText: the original's file format, INI without a section header", () => {
  test("the example file of the original README parses unchanged", async () => {
    const text = await readFile(path.join(FIXTURES, "scratch_manager.conf"), "utf8");
    assert.deepEqual(parseConfigText(text, SOURCE), {
      datadir: "/data/scratch_manager",
      cachedir: "/scratch/scratch_manager",
      mountdir: "/media",
      capacity: "25%",
      period: "600",
    });
  });

  const cases: { title: string; text: string; raw: RawConfig }[] = [
    { title: "an empty file gives no keys", text: "", raw: {} },
    { title: "; and # comments are ignored", text: "; one\n# two\nperiod = 600\n", raw: { period: "600" } },
    { title: "spaces around keys and values are trimmed", text: "   capacity   =   500GB   \n", raw: { capacity: "500GB" } },
    { title: "no spaces around = is fine", text: "interval=2\nnaming=strip-extension\n", raw: { interval: "2", naming: "strip-extension" } },
    { title: "a path with spaces is kept whole", text: "datadir = /data/my images\n", raw: { datadir: "/data/my images" } },
    { title: "every known key", text: "datadir=/a\ncachedir=/b\nmountdir=/c\ncapacity=1TB\nperiod=1200\ninterval=5\nnaming=first-dot\n", raw: { datadir: "/a", cachedir: "/b", mountdir: "/c", capacity: "1TB", period: "1200", interval: "5", naming: "first-dot" } },
  ];
  for (const c of cases) test(c.title, () => assert.deepEqual(parseConfigText(c.text, SOURCE), c.raw));

  test("an unknown key is a usage error naming the key, its file and line, and the key it most likely meant", () => {
    assertUsageError(() => parseConfigText("datadir = /a\ncapcity = 10GB\n", SOURCE), '"capcity"', `${SOURCE}:2:`, "did you mean capacity?");
  });

  test("a section header is a usage error naming the section", () => {
    assertUsageError(() => parseConfigText("[scratch_manager]\ndatadir = /a\n", SOURCE), "[scratch_manager]", "section");
  });

  // Python's configparser (which the original's "prepend a section header" idiom points to)
  // also accepts "key: value" and case-insensitive keys; such files worked with the original.
  test("key: value, as configparser accepts it, reads like key = value", () => {
    assert.deepEqual(parseConfigText("datadir: /data\n", SOURCE), { datadir: "/data" });
  });
  test("keys are case-insensitive, as configparser's are", () => {
    assert.deepEqual(parseConfigText("DataDir = /data\n", SOURCE), { datadir: "/data" });
  });
});

const BASE: RawConfig = { datadir: "/data", cachedir: "/cache", mountdir: "/mnt", capacity: "100GB" };

describe("validateConfig: values, defaults and one-line errors", () => {
  test("the original's defaults: period 1200 s, interval 5 s, naming first-dot", () => {
    const config = validateConfig(BASE);
    assert.equal(config.period, 1200);
    assert.equal(config.interval, 5);
    assert.equal(config.naming, "first-dot");
    assert.equal(config.verbose, false);
    assert.deepEqual(config.capacity, { kind: "bytes", bytes: 100 * GiB });
    assert.deepEqual([config.datadir, config.cachedir, config.mountdir], ["/data", "/cache", "/mnt"]);
  });

  test("verbose is passed through", () => assert.equal(validateConfig(BASE, true).verbose, true));

  for (const key of ["datadir", "cachedir", "mountdir", "capacity"] as const) {
    test(`a missing ${key} is an error naming it and its flag`, () => {
      const raw: RawConfig = Object.fromEntries(Object.entries(BASE).filter(([k]) => k !== key));
      assertUsageError(() => validateConfig(raw), `missing key ${key}`, `--${key}`);
    });
    test(`an empty ${key} counts as missing`, () => {
      assertUsageError(() => validateConfig({ ...BASE, [key]: "" }), `missing key ${key}`);
    });
  }

  describe("capacity: NMB | NGB | NTB | N% | bytes", () => {
    const accepted: [string, { kind: "bytes"; bytes: number } | { kind: "percent"; percent: number }][] = [
      ["500MB", { kind: "bytes", bytes: 500 * MiB }],
      ["2GB", { kind: "bytes", bytes: 2 * GiB }],
      ["1TB", { kind: "bytes", bytes: TiB }],
      ["1.5TB", { kind: "bytes", bytes: 1.5 * TiB }],
      ["1073741824", { kind: "bytes", bytes: GiB }],
      ["25%", { kind: "percent", percent: 25 }],
      ["100%", { kind: "percent", percent: 100 }],
      ["0.5%", { kind: "percent", percent: 0.5 }],
      ["50 %", { kind: "percent", percent: 50 }],
    ];
    for (const [value, capacity] of accepted) {
      test(`${JSON.stringify(value)} is accepted`, () => assert.deepEqual(validateConfig({ ...BASE, capacity: value }).capacity, capacity));
    }
    for (const value of ["0", "-1", "0%", "101%", "-5%", "abc", "%", "0.5", "0GB", " "]) {
      test(`${JSON.stringify(value)} is refused, naming capacity, the value and the accepted forms`, () => {
        assertUsageError(() => validateConfig({ ...BASE, capacity: value }), "capacity", JSON.stringify(value), "GB", "TB", "N%");
      });
    }
  });

  describe("period and interval: positive durations", () => {
    const accepted: [string, string, number][] = [
      ["period", "600", 600],
      ["period", "10m", 600],
      ["period", "1h", 3600],
      ["interval", "2", 2],
      ["interval", "0.5", 0.5],
    ];
    for (const [key, value, seconds] of accepted) {
      test(`${key} = ${value} is ${seconds} s`, () => assert.equal(validateConfig({ ...BASE, [key]: value })[key as "period" | "interval"], seconds));
    }
    for (const key of ["period", "interval"]) {
      for (const value of ["0", "-5", "abc", "5ms"]) {
        test(`${key} = ${JSON.stringify(value)} is refused, naming ${key}`, () => {
          assertUsageError(() => validateConfig({ ...BASE, [key]: value }), key, JSON.stringify(value), "duration");
        });
      }
    }
  });

  describe("naming", () => {
    for (const value of ["first-dot", "strip-extension"] as const) {
      test(`${value} is accepted`, () => assert.equal(validateConfig({ ...BASE, naming: value }).naming, value));
    }
    for (const value of ["last-dot", "FIRST-DOT", ""]) {
      test(`${JSON.stringify(value)} is refused, naming the accepted values`, () => {
        assertUsageError(() => validateConfig({ ...BASE, naming: value }), "naming", JSON.stringify(value), "first-dot or strip-extension");
      });
    }
  });

  describe("directories", () => {
    test("a relative path is refused, naming the key", () => {
      assertUsageError(() => validateConfig({ ...BASE, datadir: "data" }), "datadir", '"data"', "absolute path");
    });
    test("paths are normalised (trailing slash, ..)", () => {
      const config = validateConfig({ ...BASE, datadir: "/data/", cachedir: "/x/../cache" });
      assert.equal(config.datadir, "/data");
      assert.equal(config.cachedir, "/cache");
    });
  });
});

describe("resolveDirectories: three existing, distinct, non-nested directories, as real paths", () => {
  let root = "";
  let cleanup: () => Promise<void> = async () => {};
  before(async () => {
    const t = await tempDir("sm-config-");
    cleanup = t.cleanup;
    root = await realpath(t.dir);
    for (const d of ["data", "cache", "mnt", "data2", "data/inner", "data/..cache", "real-cache"]) await mkdir(path.join(root, d));
    await writeFile(path.join(root, "a-file"), "not a directory");
    await symlink(path.join(root, "real-cache"), path.join(root, "cache-link"));
    await symlink(path.join(root, "data"), path.join(root, "data-link"));
  });
  after(() => cleanup());

  const dirs = (over: Partial<Record<"datadir" | "cachedir" | "mountdir", string>>) =>
    makeConfig({ datadir: path.join(root, "data"), cachedir: path.join(root, "cache"), mountdir: path.join(root, "mnt"), ...over });

  test("three distinct directories are accepted as they are", async () => {
    const config = await resolveDirectories(dirs({}));
    assert.deepEqual([config.datadir, config.cachedir, config.mountdir], ["data", "cache", "mnt"].map((d) => path.join(root, d)));
  });

  test("a symlink is resolved to its real path (the kernel reports loop backing files by real path)", async () => {
    const config = await resolveDirectories(dirs({ cachedir: path.join(root, "cache-link") }));
    assert.equal(config.cachedir, path.join(root, "real-cache"));
  });

  test("siblings sharing a prefix (data, data2) do not overlap", async () => {
    const config = await resolveDirectories(dirs({ cachedir: path.join(root, "data2") }));
    assert.equal(config.cachedir, path.join(root, "data2"));
  });

  test("a cachedir or mountdir that does not exist is refused, naming the key, the path and the reason", async () => {
    const missing = path.join(root, "nope");
    await assertRejectsUsage(resolveDirectories(dirs({ cachedir: missing })), "cachedir", JSON.stringify(missing), "ENOENT", "existing directory");
    await assertRejectsUsage(resolveDirectories(dirs({ mountdir: missing })), "mountdir", JSON.stringify(missing), "ENOENT", "existing directory");
  });

  test("a datadir that does not exist is taken as written (an automounted server down at boot): the daemon waits for it", async () => {
    const missing = path.join(root, "nope");
    assert.equal((await resolveDirectories(dirs({ datadir: missing }))).datadir, missing);
  });

  test("a file instead of a directory is refused", async () => {
    const file = path.join(root, "a-file");
    await assertRejectsUsage(resolveDirectories(dirs({ cachedir: file })), "cachedir", JSON.stringify(file), "existing directory");
  });

  const overlaps: [string, Partial<Record<"datadir" | "cachedir" | "mountdir", string>>][] = [
    ["cachedir inside datadir", { cachedir: "data/inner" }],
    ["datadir inside mountdir", { datadir: "data/inner", mountdir: "data" }],
    ["the same directory twice", { cachedir: "data" }],
    ["the same directory through a symlink", { cachedir: "data-link" }],
  ];
  for (const [title, over] of overlaps) {
    test(`${title} is refused as overlapping`, async () => {
      const abs = Object.fromEntries(Object.entries(over).map(([k, v]) => [k, path.join(root, v)]));
      await assertRejectsUsage(resolveDirectories(dirs(abs)), "overlaps", "not nested");
    });
  }

  test("a nested directory whose name starts with '..' is still nested", async () => {
    await assertRejectsUsage(resolveDirectories(dirs({ cachedir: path.join(root, "data", "..cache") })), "overlaps");
  });
});

describe("validateConfig: the operating keys of issue 4", () => {
  test("defaults keep the original's behaviour: no pins, no idle eviction, nothing kept free, unlimited copies, two at a time", () => {
    const c = validateConfig(BASE);
    assert.deepEqual([c.pins, c.maxIdle, c.keepFree, c.copyBwlimit, c.maxCopies, c.metricsFile, c.metricsListen], [[], 0, { kind: "bytes", bytes: 0 }, 0, 2, undefined, undefined]);
    assert.deepEqual([c.stateDir, c.runtimeDir], ["/var/lib/scratch_manager", "/run/scratch_manager"]);
    assert.equal(c.policy, "adaptive");
  });
  test("policy = original selects the Python daemon's rule", () => assert.equal(validateConfig({ ...BASE, policy: " original " }).policy, "original"));
  test("values in their units", () => {
    const c = validateConfig({ ...BASE, pin: "coco, imagenet coco", max_idle: "2h", keep_free: "10%", copy_bwlimit: "200MB/s", max_copies: "4", metrics_listen: "[::1]:9456" });
    assert.deepEqual(c.pins, ["coco", "imagenet"]);
    assert.equal(c.maxIdle, 7200);
    assert.deepEqual(c.keepFree, { kind: "percent", percent: 10 });
    assert.equal(c.copyBwlimit, 200 * 1024 ** 2);
    assert.equal(c.maxCopies, 4);
    assert.equal(c.metricsListen, "[::1]:9456");
  });
  const bad: [RawConfig, string][] = [
    [{ pin: "a/b" }, "pin"],
    [{ max_idle: "soon" }, "max_idle"],
    [{ keep_free: "100%" }, "keep_free"],
    [{ copy_bwlimit: "fast" }, "copy_bwlimit"],
    [{ max_copies: "0" }, "max_copies"],
    [{ max_copies: "1.5" }, "max_copies"],
    [{ metrics_listen: "localhost" }, "metrics_listen"],
    [{ metrics_listen: "127.0.0.1:99999" }, "metrics_listen"],
    [{ state_dir: "relative" }, "state_dir"],
    [{ policy: "lru" }, "policy"],
  ];
  for (const [raw, key] of bad) {
    test(`${key} = ${JSON.stringify(Object.values(raw)[0])} is one error naming ${key}`, () => {
      assertUsageError(() => validateConfig({ ...BASE, ...raw }), `${key} = `, "expected");
    });
  }
});

describe("keys this version does not know", () => {
  test("one far from every key is ignored with a warning naming its line (an older build on a newer file still starts)", () => {
    const raw = parseConfigText("datadir = /a\nfrobnicator = 3\n", SOURCE);
    assert.deepEqual(raw, { datadir: "/a" });
    assert.deepEqual(configWarnings(raw), [`config: ${SOURCE}:2: unknown key "frobnicator" ignored (a newer version's? see man scratch_manager for this version's keys)`]);
  });
  test("one close to a known key is a typo, refused: its value would be lost silently", () => {
    assertUsageError(() => parseConfigText("cachdir = /a\n", SOURCE), "did you mean cachedir?");
  });
});

describe("scratch_manager config --compat: the file the original accepts", () => {
  test("its five keys in its forms; sizes in whole MB/GB/TB, durations in seconds; the rest as comments", () => {
    const raw = parseConfigText("datadir = /d\ncachedir = /c ; the SSD\nmountdir = /m\ncapacity = 1.5TB\nperiod = 10m\ninterval = 2\npeer_listen = 0.0.0.0:7000\n", SOURCE);
    const text = compatText(raw, SOURCE);
    const keys = text.split("\n").filter((l) => /^[a-z]/.test(l));
    assert.deepEqual(keys, ["datadir = /d", "cachedir = /c", "mountdir = /m", "capacity = 1536GB", "period = 600"]);
    assert.match(text, /^; {3}interval = 2$/m);
    assert.match(text, /^; {3}peer_listen = 0\.0\.0\.0:7000$/m);
    // What the original's parser reads back: the same values.
    assert.deepEqual(parseConfigText(text, SOURCE), { datadir: "/d", cachedir: "/c", mountdir: "/m", capacity: "1536GB", period: "600" });
  });
  test("capacities: percent kept whole, odd sizes rounded down to MiB with a note", () => {
    assert.deepEqual(originalCapacity("25%"), { value: "25%" });
    assert.deepEqual(originalCapacity("2TB"), { value: "2TB" });
    assert.deepEqual(originalCapacity("12.5%"), { value: "12%", note: "12.5% rounded down to whole percent" });
    assert.deepEqual(originalCapacity("1000000000"), { value: "953MB", note: "1000000000 rounded down to whole MiB" });
  });
});

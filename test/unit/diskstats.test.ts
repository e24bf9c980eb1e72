import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { DISKSTATS_SECTOR_BYTES, parseDiskstats, parseLoopCounters, readLoopReadCounters } from "../../src/observe/diskstats.js";
import { ParseError } from "../../src/observe/parse-error.js";
import { FIXTURES, tempDir } from "./helpers.js";

// Fields: major minor name, then reads completed, reads merged, sectors read, ...
// 14 fields before Linux 4.18, 18 since 4.18 (discards), 20 since 5.5 (flushes).
const KERNEL_4_14 = "   7       0 loop0 100 0 2048 10 0 0 0 0 0 10 10\n";
const KERNEL_4_19 = "   7       1 loop1 100 0 4096 10 0 0 0 0 0 10 10 0 0 0 0\n";
const KERNEL_5_10 = "   7       2 loop2 100 0 8192 10 0 0 0 0 0 10 10 0 0 0 0 0 0\n";
// A 4Kn NVMe drive: the sectors column is still in 512-byte units.
const NVME_4KN = " 259       0 nvme0n1 5000 0 80000 100 0 0 0 0 0 100 100 0 0 0 0 0 0\n";

describe("parseDiskstats: sectors read x 512, whatever the device", () => {
  test("the sector unit is 512 bytes (Documentation/admin-guide/iostats.rst), not hw_sector_size", () => {
    assert.equal(DISKSTATS_SECTOR_BYTES, 512);
    assert.equal(parseDiskstats(NVME_4KN).get("nvme0n1"), 80000 * 512);
  });

  const layouts: [string, string, string, number][] = [
    ["14 fields (Linux < 4.18)", KERNEL_4_14, "loop0", 2048 * 512],
    ["18 fields (Linux 4.18+)", KERNEL_4_19, "loop1", 4096 * 512],
    ["20 fields (Linux 5.5+)", KERNEL_5_10, "loop2", 8192 * 512],
  ];
  for (const [title, line, dev, bytes] of layouts) {
    test(`${title}: the 6th field is sectors read`, () => assert.deepEqual([...parseDiskstats(line)], [[dev, bytes]]));
  }

  test("a file captured on Linux 6.18 parses: every device, loop and others", async () => {
    const counters = parseDiskstats(await readFile(path.join(FIXTURES, "proc", "diskstats"), "utf8"));
    assert.equal(counters.size, 10);
    assert.equal(counters.get("loop0"), 134464 * 512);
    assert.equal(counters.get("loop2"), 36 * 512);
    assert.equal(counters.get("loop7"), 0);
    assert.equal(counters.get("vda"), 2259234 * 512);
  });

  test("blank lines and a missing final newline are fine", () => {
    assert.equal(parseDiskstats(`\n${KERNEL_4_14}\n\n${KERNEL_5_10.trimEnd()}`).size, 2);
  });

  test("the filter keeps only the devices asked for", () => {
    const counters = parseDiskstats(KERNEL_4_14 + NVME_4KN, "/proc/diskstats", (dev) => dev.startsWith("loop"));
    assert.deepEqual([...counters.keys()], ["loop0"]);
  });

  const malformed: [string, string][] = [
    ["too few fields", "   7       0 loop0 100 0 2048\n"],
    ["a non-numeric sectors field", "   7       0 loop0 100 0 lots 10 0 0 0 0 0 10 10\n"],
  ];
  for (const [title, line] of malformed) {
    test(`${title}: a ParseError naming the file, the line and what was expected`, () => {
      const text = KERNEL_4_14 + KERNEL_5_10 + line;
      assert.throws(
        () => parseDiskstats(text, "/host/proc/diskstats"),
        (err: unknown) => {
          assert.ok(err instanceof ParseError);
          assert.match(err.message, /^\/host\/proc\/diskstats:3: expected /);
          assert.ok(err.message.includes("loop0 100 0"), "quotes the bad line");
          return true;
        },
      );
    });
  }
});

describe("readLoopReadCounters: <procRoot>/diskstats, loop devices only", () => {
  let root = "";
  let cleanup: () => Promise<void> = async () => {};
  before(async () => {
    ({ dir: root, cleanup } = await tempDir("sm-proc-"));
  });
  after(() => cleanup());

  test("the captured fixture as a proc root: loop devices kept, vda and zram0 left out", async () => {
    const counters = await readLoopReadCounters(path.join(FIXTURES, "proc"));
    assert.deepEqual([...counters.keys()].sort(), ["loop0", "loop1", "loop2", "loop3", "loop4", "loop5", "loop6", "loop7"]);
    assert.equal(counters.get("loop1"), 109728 * 512);
  });

  test("a fake proc root in a temp dir", async () => {
    await writeFile(path.join(root, "diskstats"), KERNEL_4_14 + NVME_4KN + KERNEL_5_10);
    const counters = await readLoopReadCounters(root);
    assert.deepEqual(Object.fromEntries(counters), { loop0: 2048 * 512, loop2: 8192 * 512 });
  });

  test("a malformed line: the error names the file under the given root and the line", async () => {
    await writeFile(path.join(root, "diskstats"), `${KERNEL_4_14}garbage\n`);
    await assert.rejects(readLoopReadCounters(root), (err: unknown) => {
      assert.ok(err instanceof ParseError);
      assert.ok(err.message.startsWith(`${path.join(root, "diskstats")}:2: `), err.message);
      return true;
    });
  });
});

describe("parseLoopCounters: the wanted loop devices' counters, in one pass", () => {
  test("the same figures as parseDiskstats for loop devices, only those wanted, other lines not looked at", async () => {
    const text = await readFile(path.join(FIXTURES, "proc", "diskstats"), "utf8");
    const all = parseDiskstats(text, "diskstats", (d) => d.startsWith("loop"));
    assert.ok(all.size > 0, "the fixture has loop devices");
    assert.deepEqual(parseLoopCounters(text), all);
    const one = [...all.keys()][0] as string;
    assert.deepEqual([...parseLoopCounters(text, new Set([one]))], [[one, all.get(one)]]);
    assert.deepEqual(parseLoopCounters("garbage\n   7       3 loop3 12 0 2048 5 0 0 0 0 0 5 5 0 0 0 0\n", new Set(["loop3"])).get("loop3"), 2048 * 512);
  });
});

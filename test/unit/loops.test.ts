import assert from "node:assert/strict";
import { existsSync, readFileSync, statSync } from "node:fs";
import { mkdir, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { isDeepStrictEqual } from "node:util";
import { after, before, describe, test } from "node:test";
import type { Runner } from "../../src/lib/exec.js";
import { majorMinorOf, parseBackingFile, parseBlockStat, parseLosetupBacking, readBackingIds, readLoopDevice, readLoopDevices, type LoopDevice } from "../../src/observe/loops.js";
import { tempDir } from "./helpers.js";

describe("parseBackingFile: /sys/block/loopN/loop/backing_file", () => {
  const cases: [string, string, string, boolean][] = [
    ["a bound file", "/srv/data/coco.sqfs\n", "/srv/data/coco.sqfs", false],
    ["an unlinked file: the kernel appends ' (deleted)'", "/ssd/cache/coco.sqfs (deleted)\n", "/ssd/cache/coco.sqfs", true],
    ["' (deleted)' without the final newline", "/ssd/cache/coco.sqfs (deleted)", "/ssd/cache/coco.sqfs", true],
    ["spaces in the name are kept", "/srv/data/my data.sqfs\n", "/srv/data/my data.sqfs", false],
    ["' (deleted)' inside the name is not the suffix", "/srv/data/x (deleted).sqfs\n", "/srv/data/x (deleted).sqfs", false],
    ["a name that ends in ' (deleted)', unlinked", "/srv/data/x (deleted) (deleted)\n", "/srv/data/x (deleted)", true],
    ["UTF-8", "/srv/data/données.sqfs\n", "/srv/data/données.sqfs", false],
    ["only one final newline is the kernel's", "/srv/data/odd\n\n", "/srv/data/odd\n", false],
  ];
  for (const [title, text, backingFile, deleted] of cases) {
    test(title, () => assert.deepEqual(parseBackingFile(text), { backingFile, deleted }));
  }
});

describe("readLoopDevices: bound loop devices from <sysRoot>/block", () => {
  let sys = "";
  let cleanup: () => Promise<void> = async () => {};

  /** /sys/block/<name> is a symlink to ../devices/virtual/block/<name>, as on a real system. */
  async function device(name: string, files: Record<string, string>): Promise<void> {
    const real = path.join(sys, "devices", "virtual", "block", name);
    await mkdir(real, { recursive: true });
    for (const [rel, content] of Object.entries(files)) {
      await mkdir(path.dirname(path.join(real, rel)), { recursive: true });
      await writeFile(path.join(real, rel), content);
    }
    await symlink(path.join("..", "devices", "virtual", "block", name), path.join(sys, "block", name));
    // /sys/dev/block/<major:minor> -> ../../devices/virtual/block/<name>
    const dev = files.dev?.trim();
    if (dev) await symlink(path.join("..", "..", "devices", "virtual", "block", name), path.join(sys, "dev", "block", dev));
  }

  before(async () => {
    ({ dir: sys, cleanup } = await tempDir("sm-sys-"));
    await mkdir(path.join(sys, "block"));
    await mkdir(path.join(sys, "dev", "block"), { recursive: true });
    await device("loop0", { dev: "7:0\n", size: "2048\n", "loop/backing_file": "/srv/data/coco.sqfs\n" });
    await device("loop1", { dev: "7:1\n", size: "0\n" }); // unbound: no loop/ directory
    await device("loop2", { dev: "7:2\n", size: "8\n", "loop/backing_file": "/ssd/cache/old.sqfs (deleted)\n" });
    await device("loop12", { dev: "7:12\n", size: "16\n", "loop/backing_file": "/srv/data/my data.sqfs\n" });
    await device("sda", { dev: "8:0\n", size: "100\n", "loop/backing_file": "/not/a/loop\n" });
    await device("loop-weird", { dev: "1:1\n", size: "1\n", "loop/backing_file": "/not/a/loop\n" });
  });
  after(() => cleanup());

  test("bound devices with their backing file, major:minor and size (512-byte sectors); unbound and non-loop devices left out", async () => {
    const devices = (await readLoopDevices(sys)).sort((a, b) => a.name.localeCompare(b.name));
    const expected: LoopDevice[] = [
      { name: "loop0", majorMinor: "7:0", backingFile: "/srv/data/coco.sqfs", deleted: false, sizeBytes: 2048 * 512 },
      { name: "loop12", majorMinor: "7:12", backingFile: "/srv/data/my data.sqfs", deleted: false, sizeBytes: 16 * 512 },
      { name: "loop2", majorMinor: "7:2", backingFile: "/ssd/cache/old.sqfs", deleted: true, sizeBytes: 8 * 512 },
    ];
    assert.deepEqual(devices, expected);
  });

  test("readLoopDevice finds one device by major:minor, and only a bound loop device", async () => {
    assert.deepEqual(await readLoopDevice("7:2", sys), { name: "loop2", majorMinor: "7:2", backingFile: "/ssd/cache/old.sqfs", deleted: true, sizeBytes: 8 * 512 });
    assert.equal(await readLoopDevice("7:1", sys), undefined, "unbound");
    assert.equal(await readLoopDevice("8:0", sys), undefined, "not a loop device");
    assert.equal(await readLoopDevice("7:99", sys), undefined, "no such device");
  });

  test("an empty block directory gives no devices", async () => {
    const { dir, cleanup: done } = await tempDir("sm-sys-empty-");
    try {
      await mkdir(path.join(dir, "block"));
      assert.deepEqual(await readLoopDevices(dir), []);
    } finally {
      await done();
    }
  });

  test("this machine's /sys reads without error, and each device reads the same by major:minor", async () => {
    const devices = await readLoopDevices();
    const each = await Promise.all(devices.map((d) => readLoopDevice(d.majorMinor)));
    // Other processes attach and detach loop devices meanwhile: only a device the same before and after is compared.
    const later = new Map((await readLoopDevices()).map((d) => [d.majorMinor, d]));
    devices.forEach((d, i) => {
      assert.match(d.name, /^loop\d+$/);
      if (isDeepStrictEqual(later.get(d.majorMinor), d)) assert.deepEqual(each[i], d);
    });
  });
});

describe("parseBlockStat: /sys/block/<dev>/stat, the counters of /proc/diskstats after the name", () => {
  test("sectors read (third field) in 512-byte units", () => {
    assert.equal(parseBlockStat("     130        0     4186      102        0        0        0        0        0      108      102        0        0        0        0        0        0\n"), 4186 * 512);
  });
  test("not a stat line: undefined", () => assert.equal(parseBlockStat("garbage"), undefined));
});

describe("majorMinorOf: a dev_t from stat() as major:minor", () => {
  /** glibc's gnu_dev_makedev. */
  const makedev = (major: bigint, minor: bigint) => ((major & 0xfffff000n) << 32n) | ((major & 0xfffn) << 8n) | ((minor & 0xffffff00n) << 12n) | (minor & 0xffn);
  for (const [major, minor] of [
    [7n, 0n],
    [7n, 3n],
    [7n, 300n],
    [259n, 1n],
    [4095n, 1048575n],
    [4096n, 16777215n],
  ] as const) {
    test(`${major}:${minor}`, () => assert.equal(majorMinorOf(makedev(major, minor)), `${major}:${minor}`));
  }
  test("this machine's /dev/loop0 decodes to what /sys/block/loop0/dev says", (t) => {
    if (!existsSync("/dev/loop0") || !existsSync("/sys/block/loop0/dev")) return t.skip("no loop0 here");
    assert.equal(majorMinorOf(statSync("/dev/loop0", { bigint: true }).rdev), readFileSync("/sys/block/loop0/dev", "utf8").trim());
  });
});

describe("parseLosetupBacking and readBackingIds: the backing file's device and inode (LOOP_GET_STATUS64)", () => {
  test("losetup's JSON, padded major:minor trimmed; rows without a backing file skipped", () => {
    const text = JSON.stringify({
      loopdevices: [
        { name: "/dev/loop0", "back-maj:min": "       0:39 ", "back-ino": 2146349 },
        { name: "/dev/loop1", "back-maj:min": "     254:0  ", "back-ino": 12 },
        { name: "/dev/loop2", "back-maj:min": null, "back-ino": null },
      ],
    });
    assert.deepEqual([...parseLosetupBacking(text)], [
      ["loop0", { dev: "0:39", ino: 2146349 }],
      ["loop1", { dev: "254:0", ino: 12 }],
    ]);
  });
  test("one `losetup --list` with no device argument (a second name would be taken for a file to attach), filtered to the names asked", async () => {
    const calls: string[][] = [];
    const run: Runner = (file, args) => {
      calls.push([file, ...args]);
      return Promise.resolve({ stdout: JSON.stringify({ loopdevices: [{ name: "/dev/loop0", "back-maj:min": "0:39", "back-ino": 1 }, { name: "/dev/loop5", "back-maj:min": "0:40", "back-ino": 2 }] }), stderr: "", ms: 1 });
    };
    assert.deepEqual([...(await readBackingIds(run, ["loop5", "loop9"], 1000)).keys()], ["loop5"]);
    assert.deepEqual(calls, [["losetup", "--list", "--json", "--output", "NAME,BACK-MAJ:MIN,BACK-INO"]]);
  });
});

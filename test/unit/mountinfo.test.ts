import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { describe, test } from "node:test";
import { parseMountinfo, readMountinfo, stackAt, unescapeOctal, type MountEntry } from "../../src/observe/mountinfo.js";
import { ParseError } from "../../src/observe/parse-error.js";
import { FIXTURES, mountEntry } from "./helpers.js";

describe("unescapeOctal: mountinfo's \\ooo escapes (fs/proc_namespace.c)", () => {
  const cases: [string, string, string][] = [
    ["no escape", "/mnt/ds/coco", "/mnt/ds/coco"],
    ["\\040 is a space", "/mnt/ds/my\\040data", "/mnt/ds/my data"],
    ["\\011 is a tab", "/mnt/ds/a\\011b", "/mnt/ds/a\tb"],
    ["\\012 is a newline", "/mnt/ds/a\\012b", "/mnt/ds/a\nb"],
    ["\\134 is a backslash", "/mnt/ds/back\\134slash", "/mnt/ds/back\\slash"],
    ["an escaped backslash before digits stays literal", "/mnt/ds/a\\134040b", "/mnt/ds/a\\040b"],
    ["UTF-8 is not escaped and stays as is", "/mnt/ds/données", "/mnt/ds/données"],
    ["UTF-8 next to an escape", "/mnt/ds/数据\\040集", "/mnt/ds/数据 集"],
    ["escaped UTF-8 bytes are decoded as UTF-8", "/mnt/ds/caf\\303\\251", "/mnt/ds/café"],
    ["a backslash not followed by three octal digits is kept", "/a\\9x\\04", "/a\\9x\\04"],
  ];
  for (const [title, field, expected] of cases) test(title, () => assert.equal(unescapeOctal(field), expected));
});

describe("parseMountinfo (proc(5))", () => {
  test("fields: ids, major:minor, mount point, options, fs type, source", () => {
    const [e] = parseMountinfo("101 40 7:0 / /mnt/ds/coco ro,nosuid,nodev,relatime shared:60 - squashfs /dev/loop0 ro,errors=continue\n");
    assert.deepEqual(e, { mountId: 101, parentId: 40, majorMinor: "7:0", mountPoint: "/mnt/ds/coco", options: "ro,nosuid,nodev,relatime", fsType: "squashfs", source: "/dev/loop0" });
  });

  const tags: [string, string][] = [
    ["no optional fields", "104 40 7:3 / /mnt/ds/x ro - erofs /dev/loop3 ro"],
    ["one optional field", "104 40 7:3 / /mnt/ds/x ro shared:1 - erofs /dev/loop3 ro"],
    ["three optional fields", "104 40 7:3 / /mnt/ds/x ro shared:63 master:1 propagate_from:2 - erofs /dev/loop3 ro"],
    ["an 'unbindable' tag", "104 40 7:3 / /mnt/ds/x ro unbindable - erofs /dev/loop3 ro"],
  ];
  for (const [title, line] of tags) {
    test(`${title} before the '-' separator: fs type and source still found`, () => {
      const [e] = parseMountinfo(line);
      assert.equal(e?.fsType, "erofs");
      assert.equal(e?.source, "/dev/loop3");
      assert.equal(e?.options, "ro");
    });
  }

  test("a real capture (Linux 6.18): escaped mount points and sources, UTF-8 as is", async () => {
    const entries = parseMountinfo(await readFile(path.join(FIXTURES, "mountinfo-escapes-linux-6.18"), "utf8"));
    assert.deepEqual(
      entries.map((e) => [e.mountPoint, e.source]),
      [
        ["/tmp/smcap/my data", "src my data"],
        ["/tmp/smcap/tab\tand\nnewline", "src tab\tand\nnewline"],
        ["/tmp/smcap/back\\slash", "src back\\slash"],
        ["/tmp/smcap/données", "src données"],
        ["/tmp/smcap/数据", "src 数据"],
        ["/tmp/smcap/a\\040b", "src a\\040b"],
      ],
    );
  });

  test("readMountinfo reads <procRoot>/self/mountinfo", async () => {
    const entries = await readMountinfo(path.join(FIXTURES, "proc"));
    assert.equal(entries.length, 11);
    const byId = new Map(entries.map((e) => [e.mountId, e]));
    assert.equal(byId.get(102)?.mountPoint, "/mnt/ds/my data");
    assert.equal(byId.get(104)?.mountPoint, "/mnt/ds/tab\tand\nnewline");
    assert.equal(byId.get(105)?.mountPoint, "/mnt/ds/back\\slash");
    assert.equal(byId.get(106)?.mountPoint, "/mnt/ds/données");
    assert.equal(byId.get(107)?.mountPoint, "/mnt/ds/数据");
    assert.equal(byId.get(108)?.fsType, "fuse.sshfs");
    assert.equal(byId.get(108)?.source, "user@host:/export dir");
  });

  test("this machine's own /proc/self/mountinfo parses and has a root mount", async () => {
    const entries = await readMountinfo();
    assert.ok(entries.some((e) => e.mountPoint === "/"));
  });

  const malformed: [string, string][] = [
    ["no '-' separator", "101 40 7:0 / /mnt/ds/coco ro shared:60 squashfs /dev/loop0 ro"],
    ["nothing after the separator", "101 40 7:0 / /mnt/ds/coco ro -"],
    ["a non-numeric mount id", "abc 40 7:0 / /mnt/ds/coco ro - squashfs /dev/loop0 ro"],
  ];
  for (const [title, line] of malformed) {
    test(`${title}: a ParseError naming the file and the line`, () => {
      const text = `27 1 254:0 / / rw - ext4 /dev/vda rw\n${line}\n`;
      assert.throws(
        () => parseMountinfo(text, "/proc/1/mountinfo"),
        (err: unknown) => err instanceof ParseError && err.message.startsWith("/proc/1/mountinfo:2: expected "),
      );
    });
  }
});

describe("stackAt: the mounts on one mount point, bottom first, by parent chain", () => {
  // mountdir (40) holds a at /mnt/ds/a: slow 50, cache 52 on top of it, then a foreign tmpfs 55 on top;
  // b (51) and a submount of a (53) are unrelated and listed in between.
  const entries: MountEntry[] = [
    mountEntry(40, 1, "/mnt/ds", { fsType: "tmpfs" }),
    mountEntry(50, 40, "/mnt/ds/a", { majorMinor: "7:0" }),
    mountEntry(51, 40, "/mnt/ds/b", { majorMinor: "7:1" }),
    mountEntry(52, 50, "/mnt/ds/a", { majorMinor: "7:2" }),
    mountEntry(53, 52, "/mnt/ds/a/sub", { majorMinor: "0:77" }),
    mountEntry(54, 51, "/mnt/ds/b/deeper", { majorMinor: "0:78" }),
    mountEntry(55, 52, "/mnt/ds/a", { majorMinor: "0:79", fsType: "tmpfs" }),
  ];
  const ids = (stack: MountEntry[]) => stack.map((e) => e.mountId);

  test("the overmount chain at /mnt/ds/a, unrelated mounts interleaved", () => assert.deepEqual(ids(stackAt(entries, "/mnt/ds/a")), [50, 52, 55]));
  test("a single mount", () => assert.deepEqual(ids(stackAt(entries, "/mnt/ds/b")), [51]));
  test("a mount point with nothing mounted", () => assert.deepEqual(stackAt(entries, "/mnt/ds/c"), []));
  test("the order of the lines does not matter, only the parent chain", () => {
    const shuffled = [entries[6], entries[3], entries[5], entries[1], entries[0], entries[4], entries[2]] as MountEntry[];
    assert.deepEqual(ids(stackAt(shuffled, "/mnt/ds/a")), [50, 52, 55]);
  });
  test("the fixture's overmount at /mnt/ds/coco: 101 then 103", async () => {
    assert.deepEqual(ids(stackAt(await readMountinfo(path.join(FIXTURES, "proc")), "/mnt/ds/coco")), [101, 103]);
  });
});

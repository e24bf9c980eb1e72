/** observe/kernel-log.ts: the kernel's read errors in /dev/kmsg records, and only the kernel's. */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { KernelLog, parseKmsgRecord } from "../../src/observe/kernel-log.js";

describe("parseKmsgRecord", () => {
  // Records as this machine's kernel (6.18) wrote them, with the fields /dev/kmsg puts before ";".
  const cases: [string, string | undefined][] = [
    ["3,4711,25987376892,-;I/O error, dev loop4, sector 1792 op 0x0:(READ) flags 0x800 phys_seg 1 prio class 2", "loop4"],
    ["3,100,1000,-;critical medium error, dev nvme0n1, sector 123456 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 0", "nvme0n1"],
    ["3,101,1000,-;Buffer I/O error on dev dm-0, logical block 0, async page read", "dm-0"],
    ["2,102,1000,-;EXT4-fs error (device sdb1): ext4_find_entry:1599: inode #2: comm ls: reading directory lblock 0", "sdb1"],
    ["3,103,1000,-;SQUASHFS error: Failed to read block 0xa00060: -5", undefined],
    ["6,104,1000,-;loop0: detected capacity change from 0 to 8192", undefined],
  ];
  for (const [record, device] of cases) test(`${record.slice(record.indexOf(";") + 1, record.indexOf(";") + 40)}... -> ${device ?? "nothing"}`, () => assert.equal(parseKmsgRecord(record)?.device, device));
  test("a user's write to /dev/kmsg (facility user, 8 and up) is not believed", () => {
    assert.equal(parseKmsgRecord("11,105,1000,-;I/O error, dev nvme0n1, sector 1 op 0x0:(READ)"), undefined);
  });
  test("the record's time, in microseconds since boot, and its text, bounded", () => {
    const e = parseKmsgRecord(`3,106,987654,-;I/O error, dev loop4, sector 1 ${"x".repeat(1000)}`);
    assert.equal(e?.atUs, 987654);
    assert.equal(e?.text.length, 300);
  });
});

describe("KernelLog", () => {
  test("records before the daemon's start are not its evidence; a log that cannot be read is said once", () => {
    const dir = mkdtempSync(path.join(tmpdir(), "kmsg-"));
    try {
      // A regular file stands for /dev/kmsg: one read returns it whole, as one record; then end of file.
      const file = path.join(dir, "kmsg");
      writeFileSync(file, "3,1,5000,-;I/O error, dev loop4, sector 1 op 0x0:(READ)");
      assert.deepEqual(new KernelLog(6000, file).read(), [], "logged before the start");
      assert.deepEqual(new KernelLog(4000, file).read().map((e) => e.device), ["loop4"]);
      const told: string[] = [];
      const missing = new KernelLog(0, path.join(dir, "none"), (why) => told.push(why));
      assert.deepEqual(missing.read(), []);
      assert.deepEqual(missing.read(), []);
      assert.equal(told.length, 1);
      assert.match(told[0] ?? "", /ENOENT/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** plan/cache-device.ts and reconcile's fall-back: a failing cache device told apart, and its overmounts taken off. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { ProbeResult, ProbeRound } from "../../src/observe/probe.js";
import { assessCacheDevice, RECOVERY_ROUNDS, workingDevice } from "../../src/plan/cache-device.js";

const T0 = Date.UTC(2030, 0, 1);
const target = { tier: "cache" as const, dataset: "coco", path: "/dev/loop3", sizeBytes: 1 << 20 };
const ok: ProbeResult = { target, ok: true };
const fail = (code: string, timedOut = false): ProbeResult => ({ target, ok: false, code, message: `/dev/loop3: ${code === "EIO" ? "Input/output error" : code}`, timedOut });
const round = (at: number, ...results: ProbeResult[]): ProbeRound => ({ at, results });

describe("assessCacheDevice", () => {
  test("a read error of the device (EIO, ENODEV) turns it failing, naming the read and the error; ENXIO (a loop device just detached) does not", () => {
    assert.equal(assessCacheDevice(workingDevice(T0), round(T0 + 5000, fail("ENXIO"))).up, true);
    for (const code of ["EIO", "ENODEV"]) {
      const c = assessCacheDevice(workingDevice(T0), round(T0 + 5000, ok, fail(code)));
      assert.equal(c.up, false, code);
      assert.equal(c.reason, "CacheDeviceFailing");
      assert.match(c.message, new RegExp(`^probe read of /dev/loop3: .* \\(${code}\\)$`));
      assert.equal(c.since, T0 + 5000);
    }
  });
  test("a timeout (a slow device: NotResponding's), or no round, changes nothing", () => {
    const w = workingDevice(T0);
    assert.deepEqual(assessCacheDevice(w, round(T0 + 5000, fail("ETIMEDOUT", true))), w);
    assert.equal(assessCacheDevice(w, undefined), w);
  });
  test(`back to working after ${RECOVERY_ROUNDS} clean rounds in a row; an error in between starts over; timeouts do not count`, () => {
    let c = assessCacheDevice(workingDevice(T0), round(T0 + 1, fail("EIO")));
    const sequence: ProbeResult[][] = [[ok], [ok], [fail("EIO")], [ok], [fail("ETIMEDOUT", true)], [ok], [ok]];
    const ups = sequence.map((results, i) => (c = assessCacheDevice(c, round(T0 + 10 + i, ...results))).up);
    assert.deepEqual(ups, [false, false, false, false, false, false, true]);
    assert.equal(c.since, T0 + 16);
    assert.equal(c.reason, "Working");
  });
  test("failing stays failing, with its first evidence and time", () => {
    const first = assessCacheDevice(workingDevice(T0), round(T0 + 1, fail("EIO")));
    const again = assessCacheDevice(first, round(T0 + 2, fail("ENODEV")));
    assert.equal(again.since, T0 + 1);
    assert.equal(again.message, first.message);
  });
});

describe("assessCacheDevice: a read-only cache file system", () => {
  const ro = { mountPoint: "/scratch", source: "/dev/nvme0n1p2" };
  test("ReadOnly while mountinfo says ro: still up (the copies are read), naming the device; Working again once writable", () => {
    const c = assessCacheDevice(workingDevice(T0), undefined, ro, T0 + 1000);
    assert.deepEqual([c.up, c.reason, c.since], [true, "ReadOnly", T0 + 1000]);
    assert.equal(c.message, "/dev/nvme0n1p2 is mounted read-only at /scratch");
    assert.equal(assessCacheDevice(c, round(T0 + 2000, ok), ro, T0 + 2000), c, "unchanged while it stays so");
    const back = assessCacheDevice(c, undefined, undefined, T0 + 3000);
    assert.deepEqual([back.up, back.reason, back.since], [true, "Working", T0 + 3000]);
  });
  test("a device error wins over read-only: its overmounts must come off", () => {
    const c = assessCacheDevice(workingDevice(T0), undefined, ro, T0 + 1000);
    const failing = assessCacheDevice(c, round(T0 + 2000, fail("EIO")), ro, T0 + 2000);
    assert.deepEqual([failing.up, failing.reason], [false, "CacheDeviceFailing"]);
  });
});

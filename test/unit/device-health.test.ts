/** observe/device-health.ts: the disk beneath cachedir and its SMART verdict, from systeminformation's output (test/fixtures/systeminformation/). */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import { type CacheMount, DeviceHealthWatch, type DeviceInfoSource, describeCacheDevice, MAX_MESSAGE, MAX_TEXT, readCacheDeviceHealth } from "../../src/observe/device-health.js";
import { FIXTURES } from "./helpers.js";
import type { Clock } from "../../src/lib/clock.js";

type Machine = { blockDevices: unknown[]; diskLayout: unknown[] };

function machine(name: string): Machine {
  const read = (what: string): unknown[] => JSON.parse(readFileSync(path.join(FIXTURES, "systeminformation", `${name}.${what}.json`), "utf8"));
  return { blockDevices: read("blockDevices"), diskLayout: read("diskLayout") };
}

const sata = machine("sata-partition-ok");
const nvme = machine("nvme-predicted-failure");
const real = machine("this-machine");

const on = (m: Machine, source: string, majorMinor = "259:2") => describeCacheDevice(m.blockDevices, m.diskLayout, { source, majorMinor });

/** A copy of a fixture's disk, changed by `edit`. */
function withDisk(m: Machine, device: string, edit: (disk: Record<string, unknown>) => void): Machine {
  const copy: Machine = structuredClone(m);
  for (const d of copy.diskLayout as Record<string, unknown>[]) if (d.device === device) edit(d);
  return copy;
}

describe("describeCacheDevice", () => {
  test("a partition takes its disk's identity and SMART status (sda3 on an Ok sda)", () => {
    const h = on(sata, "/dev/sda3", "8:3");
    assert.deepEqual(h, {
      device: "sda3",
      disk: "/dev/sda",
      model: "INTEL SSDSC2KG960G8",
      serial: "PHYG0123004S960CGN",
      smart: "ok",
      message: "cachedir is on sda3 of /dev/sda (INTEL SSDSC2KG960G8, serial PHYG0123004S960CGN): SMART Ok",
    });
  });

  test("predicted failure of the disk beneath cachedir: the verdict, the model and smartctl's evidence in the message; the machine's other (Ok) disk does not count", () => {
    const h = on(nvme, "/dev/nvme1n1p1");
    assert.equal(h.smart, "predicted-failure");
    assert.equal(h.disk, "/dev/nvme1n1");
    assert.equal(h.model, "INTEL SSDPE2KX040T8");
    assert.match(h.message, /^cachedir is on nvme1n1p1 of \/dev\/nvme1n1 \(INTEL SSDPE2KX040T8, serial PHLJ9123004X4P0DGN\): SMART predicted failure: /);
    assert.match(h.message, /NVMe critical warning 0x04 \(reliability degraded\)/);
    assert.match(h.message, /104% of rated endurance used/);
    const root = on(nvme, "/dev/nvme0n1p2");
    assert.deepEqual([root.smart, root.disk, root.model], ["ok", "/dev/nvme0n1", "SAMSUNG MZVL2512HCJQ-00B00"]);
  });

  test("an ATA attribute failing now is named as the evidence", () => {
    const failing = withDisk(sata, "/dev/sda", (d) => {
      d.smartStatus = "Predicted Failure";
      const smart = d.smartData as { smart_status: { passed: boolean }; ata_smart_attributes: { table: Record<string, unknown>[] } };
      smart.smart_status.passed = false;
      Object.assign(smart.ata_smart_attributes.table[0] as object, { value: 1, thresh: 10, when_failed: "now" });
    });
    const h = on(failing, "/dev/sda3");
    assert.equal(h.smart, "predicted-failure");
    assert.match(h.message, /Reallocated_Sector_Ct failing now \(value 1, threshold 10\)/);
  });

  test("the smartctl -H fall-back (no smartData): the status string alone decides", () => {
    const h = on(
      withDisk(sata, "/dev/sda", (d) => {
        d.smartStatus = "Predicted Failure";
        delete d.smartData;
      }),
      "/dev/sda3",
    );
    assert.equal(h.smart, "predicted-failure");
    assert.match(h.message, /smartctl -H: FAILED/);
  });

  test("a disk without a SMART status (no smartctl): unknown, saying so", () => {
    const h = on(
      withDisk(sata, "/dev/sda", (d) => {
        d.smartStatus = "unknown";
        delete d.smartData;
      }),
      "/dev/sda3",
    );
    assert.equal(h.smart, "unknown");
    assert.equal(h.model, "INTEL SSDSC2KG960G8");
    assert.match(h.message, /SMART status unknown: smartctl gave none/);
  });

  test("no disk beneath cachedir: unknown, with the reason", () => {
    const cases: { source: string; majorMinor: string; device: string; why: RegExp }[] = [
      { source: "tmpfs", majorMinor: "0:52", device: "tmpfs", why: /^cachedir is on tmpfs \(0:52\), not a block device \(memory\): no disk, no SMART status$/ },
      { source: "fileserver:/scratch", majorMinor: "0:61", device: "fileserver:/scratch", why: /not a block device/ },
      { source: "/dev/loop1", majorMinor: "7:1", device: "loop1", why: /^cachedir is on loop device loop1 \(7:1\): the disk beneath its backing file is not looked up/ },
      { source: "/dev/loop9", majorMinor: "7:9", device: "loop9", why: /loop device loop9/ },
      { source: "/dev/sdz1", majorMinor: "65:145", device: "sdz1", why: /^cachedir's device \/dev\/sdz1 \(65:145\) is not among the 5 block devices lsblk listed/ },
      { source: "/dev/root", majorMinor: "8:3", device: "root", why: /\/dev\/root \(8:3\) is not among/ },
    ];
    for (const c of cases) {
      const h = on(sata, c.source, c.majorMinor);
      assert.equal(h.smart, "unknown", c.source);
      assert.equal(h.device, c.device, c.source);
      assert.equal(h.disk, undefined, c.source);
      assert.match(h.message, c.why, c.source);
    }
  });

  test("this machine (real output): ext4 on the whole virtio disk, which diskLayout did not list", () => {
    const h = on(real, "/dev/vda", "254:0");
    assert.deepEqual([h.device, h.disk, h.smart, h.model], ["vda", "/dev/vda", "unknown", undefined]);
    assert.match(h.message, /^cachedir is on \/dev\/vda \(no model\): SMART status unknown: diskLayout listed no disks/);
    // A diskLayout that lists other disks: the virtual disk without a model is the likely reason.
    const other = on({ ...real, diskLayout: sata.diskLayout }, "/dev/vda", "254:0");
    assert.match(other.message, /not among the 1 disks diskLayout listed \(it skips a mounted disk without a model/);
  });

  test("LVM: found by its /dev/mapper or /dev/VG/LV name, unknown since lsblk's flat list does not link it to its disks", () => {
    const lv = { name: "vg--data-scratch", type: "lvm", fsType: "xfs", mount: "/local/scratch", model: "", serial: "", group: "" };
    const m = { ...sata, blockDevices: [...sata.blockDevices, lv] };
    for (const source of ["/dev/mapper/vg--data-scratch", "/dev/vg-data/scratch"]) {
      const h = on(m, source, "253:0");
      assert.equal(h.smart, "unknown", source);
      assert.equal(h.device, "vg--data-scratch", source);
      assert.match(h.message, /^cachedir is on vg--data-scratch \(253:0\), of type lvm, whose disks lsblk's flat list does not link; no SMART status$/, source);
    }
  });

  test("RAID: the array's member disks (their partitions' group names it); one failing fails it", () => {
    const part = (name: string, disk: string) => ({ name, type: "part", fsType: "linux_raid_member", mount: "", model: "", serial: "", group: "md0", device: disk });
    const blockDevices = [
      ...nvme.blockDevices.filter((b) => !["nvme0n1p1", "nvme1n1p1"].includes((b as { name: string }).name)),
      part("nvme0n1p1", "/dev/nvme0n1"),
      part("nvme1n1p1", "/dev/nvme1n1"),
      { name: "md0", type: "raid0", fsType: "xfs", mount: "/local/scratch", model: "", serial: "", group: "" },
    ];
    const h = describeCacheDevice(blockDevices, nvme.diskLayout, { source: "/dev/md0", majorMinor: "9:0" });
    assert.deepEqual([h.smart, h.disk, h.model], ["predicted-failure", "/dev/nvme1n1", "INTEL SSDPE2KX040T8"]);
    assert.match(h.message, /^cachedir is on md0 \(raid0\) of \/dev\/nvme0n1 \(SAMSUNG MZVL2512HCJQ-00B00, serial S675NX0R812345\): SMART Ok; \/dev\/nvme1n1 \(INTEL SSDPE2KX040T8, serial PHLJ9123004X4P0DGN\): SMART predicted failure/);
    const healthy = withDisk({ blockDevices, diskLayout: nvme.diskLayout }, "/dev/nvme1n1", (d) => {
      d.smartStatus = "Ok";
      delete d.smartData;
    });
    assert.equal(describeCacheDevice(healthy.blockDevices, healthy.diskLayout, { source: "/dev/md0", majorMinor: "9:0" }).smart, "ok");
  });

  test("input of the wrong shape counts as absent, and never throws", () => {
    const junk: unknown[] = [null, undefined, 42, "sda", {}, [null, 1, "x", { name: 5, type: ["disk"] }]];
    for (const blockDevices of junk) {
      for (const diskLayout of junk) {
        const h = describeCacheDevice(blockDevices, diskLayout, { source: "/dev/sda3", majorMinor: "8:3" });
        assert.equal(h.smart, "unknown");
        assert.equal(h.device, "sda3");
      }
    }
    const wrongTypes = [{ device: "/dev/sda", name: { model: 1 }, serialNum: 7, smartStatus: null, smartData: "FAILED" }];
    const h = describeCacheDevice(sata.blockDevices, wrongTypes, { source: "/dev/sda3", majorMinor: "8:3" });
    assert.deepEqual([h.smart, h.disk, h.model], ["unknown", "/dev/sda", undefined]);
  });

  test(`strings from the hardware are bounded (${MAX_TEXT} characters and an ellipsis) and kept on one line`, () => {
    const long = `EVIL\nMODEL\u001b[31m${"X".repeat(10_000)}`;
    const m = withDisk(nvme, "/dev/nvme1n1", (d) => {
      d.name = long;
      d.serialNum = long;
    });
    const h = on(m, "/dev/nvme1n1p1");
    assert.ok(h.model !== undefined && h.model.length <= MAX_TEXT + 1, `model of ${h.model?.length}`);
    assert.ok(h.model.startsWith("EVIL\\x0aMODEL\\x1b[31mXXX") && h.model.endsWith("…"), h.model.slice(0, 30));
    assert.ok(h.serial !== undefined && h.serial.length <= MAX_TEXT + 1);
    assert.ok(h.message.length <= MAX_MESSAGE + 1, `message of ${h.message.length}`);
    assert.ok(!h.message.includes("\n") && !h.message.includes("\u001b"), "control characters escaped");
    assert.equal(h.smart, "predicted-failure");
  });
});

describe("readCacheDeviceHealth", () => {
  const mount: CacheMount = { source: "/dev/nvme1n1p1", majorMinor: "259:3" };
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;

  test("describes what the library answers, and leaves no timer behind", async () => {
    const lib: DeviceInfoSource = { blockDevices: async () => nvme.blockDevices, diskLayout: async () => nvme.diskLayout };
    const before = timers();
    const h = await readCacheDeviceHealth(mount, 60_000, lib);
    assert.deepEqual(h, describeCacheDevice(nvme.blockDevices, nvme.diskLayout, mount));
    assert.equal(h.smart, "predicted-failure");
    assert.equal(timers(), before);
  });

  test("a library that does not answer: unknown after the timeout, naming it", async () => {
    const never = () => new Promise<unknown>(() => undefined);
    const h = await readCacheDeviceHealth(mount, 50, { blockDevices: async () => [], diskLayout: never });
    assert.deepEqual(h, { device: "nvme1n1p1", smart: "unknown", message: "cachedir is on nvme1n1p1 (259:3): systeminformation did not answer in 0.05 s" });
  });

  test("a library that throws or rejects: unknown with its error, no throw", async () => {
    const libs: [string, DeviceInfoSource][] = [
      [
        "throws",
        {
          blockDevices: () => {
            throw new Error("lsblk exploded");
          },
          diskLayout: async () => [],
        },
      ],
      ["rejects", { blockDevices: async () => [], diskLayout: () => Promise.reject(new Error("lsblk exploded")) }],
    ];
    for (const [how, lib] of libs) {
      const h = await readCacheDeviceHealth(mount, 60_000, lib);
      assert.equal(h.smart, "unknown", how);
      assert.equal(h.message, "cachedir is on nvme1n1p1 (259:3): systeminformation failed: lsblk exploded", how);
    }
  });
});

describe("DeviceHealthWatch", () => {
  test("reads first after the delay, then every period, never two at once; tells a changed verdict only", async () => {
    let t = 0;
    const clock: Clock = { now: () => t, monotonic: () => t } as Clock;
    const verdicts: ("ok" | "predicted-failure")[] = ["ok", "ok", "predicted-failure"];
    let reads = 0;
    let release: (() => void) | undefined;
    const watch = new DeviceHealthWatch(clock, 1000, 100, async () => {
      const smart = verdicts[reads++] ?? "ok";
      await new Promise<void>((r) => (release = r));
      return { device: "nvme0n1p2", smart, message: smart };
    });
    const told: string[] = [];
    const mount = { source: "/dev/nvme0n1p2", majorMinor: "259:2" };
    const kick = () => watch.kick(mount, (h, prev) => told.push(`${prev?.smart ?? "-"}>${h.smart}`));
    kick();
    assert.equal(reads, 0, "not before the first delay");
    t = 100;
    kick();
    kick();
    assert.equal(reads, 1, "one read, not two at once");
    release?.();
    await new Promise((r) => setImmediate(r));
    t = 1099;
    kick();
    assert.equal(reads, 1, "not before a period");
    for (const at of [1100, 2100]) {
      t = at;
      kick();
      release?.();
      await new Promise((r) => setImmediate(r));
    }
    assert.equal(reads, 3);
    assert.deepEqual(told, ["->ok", "ok>predicted-failure"]);
    assert.equal(watch.current?.smart, "predicted-failure");
  });
});

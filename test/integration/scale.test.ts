/**
 * Issue 11: attaching in O(1) (losetup, mount, detach: autoclear), never
 * leaking a loop device on any path; READY=1 at once with many images, the
 * mounting going on behind with its progress; datadir listed only when it
 * changed, every change still seen. Real images, real loop devices, a real
 * FUSE file server that counts what reaches it.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, utimesSync, writeFileSync, writeSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import type { StatusReport } from "../../src/report/status.js";
import { CLI, Daemon, FaultFs, makeImage, stackAt, startReader, waitUntil, withRoot, type TestRoot } from "./harness.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ticks = (d: Daemon) => d.logs.filter((l) => l.msg === "tick").length;
async function waitTicks(d: Daemon, n: number): Promise<void> {
  const start = ticks(d);
  await waitUntil(`${n} ticks`, () => ticks(d) >= start + n, 30_000);
}

interface LoopInfo {
  name: string;
  "back-file": string | null;
  autoclear: boolean | string;
}

/** Loop devices whose backing file is this one (with or without " (deleted)"). */
function loopsOf(file: string): LoopInfo[] {
  const out = execFileSync("losetup", ["-J", "-l", "-O", "NAME,BACK-FILE,AUTOCLEAR"], { encoding: "utf8" }).trim();
  if (out === "") return [];
  return (JSON.parse(out) as { loopdevices: LoopInfo[] }).loopdevices.filter((l) => (l["back-file"] ?? "").replace(/ \(deleted\)$/, "") === file);
}
const isSet = (v: boolean | string) => v === true || v === "1";

function statusJson(root: TestRoot): StatusReport {
  const r = spawnSync(process.execPath, [CLI, "status", "--json", "--runtime-dir", path.join(root.root, "run")], { encoding: "utf8", timeout: 10_000 });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as StatusReport;
}

test("attach: losetup, mount the device, then detach it so the kernel sets autoclear; unmounting releases the device", async () => {
  await withRoot("attach", async (root, track) => {
    const image = makeImage(root, path.join(root.data, "alpha.sqfs"), { "a.txt": "alpha" });
    const d = track(Daemon.start(root));
    await waitUntil("mounted", () => stackAt(path.join(root.mnt, "alpha")).length === 1);
    const [loop] = loopsOf(image);
    assert.ok(loop, "one loop device backs the image");
    assert.equal(loopsOf(image).length, 1, "exactly one");
    assert.ok(isSet(loop.autoclear), `autoclear set on ${loop.name}`);
    assert.equal(readFileSync(path.join(root.mnt, "alpha", "a.txt"), "utf8"), "alpha");
    rmSync(image);
    await waitUntil("unmounted", () => stackAt(path.join(root.mnt, "alpha")).length === 0);
    await waitUntil("its loop device released with its mount", () => loopsOf(image).length === 0, 5000);
    assert.equal(d.logs.filter((l) => l.msg === "action failed").length, 0);
  });
});

test("no loop device leaks: a mount that fails, and one cut by command_timeout, leave none attached", async () => {
  await withRoot("attachfail", async (root, track) => {
    const bad = makeImage(root, path.join(root.data, "bad.sqfs"), { "a.txt": "bad" });
    const slow = makeImage(root, path.join(root.data, "slow.sqfs"), { "a.txt": "slow" });
    makeImage(root, path.join(root.data, "fine.sqfs"), { "a.txt": "fine" });
    const mountWrapper = [
      `case "$*" in`,
      `  */mnt/bad) echo "mount: wrong fs type" >&2; exit 32 ;;`,
      `  */mnt/slow) exec sleep 600 ;;`,
      `esac`,
      `exec /usr/bin/mount "$@"`,
    ].join("\n");
    const d = track(Daemon.start(root, { command_timeout: 1 }, { bin: { mount: mountWrapper } }));
    await waitUntil("fine mounted", () => stackAt(path.join(root.mnt, "fine")).length === 1);
    await d.waitForLog("bad failed", (l) => l.msg === "action failed" && l.dataset === "bad");
    await d.waitForLog("slow cut", (l) => l.msg === "action failed" && l.dataset === "slow" && /timed out/.test(String(l.err)));
    await d.waitForLog("both retried", () => ["bad", "slow"].every((n) => d.logs.some((l) => l.msg === "dataset in back-off" && l.dataset === n && Number(l.failures) >= 2)), 30_000);
    // Retries are attempts of their own: one device at most in flight, never one per attempt.
    assert.ok(loopsOf(bad).length <= 1 && loopsOf(slow).length <= 1, `no device piles up: ${JSON.stringify([...loopsOf(bad), ...loopsOf(slow)])}`);
    // SIGTERM waits for the tick (command_timeout 1 s): the attempt in flight detaches its device too.
    assert.equal((await d.stop()).code, 0);
    assert.deepEqual(loopsOf(bad), [], "the failed mount's device was detached");
    assert.deepEqual(loopsOf(slow), [], "the timed-out mount's device was detached");
  });
});

test("a daemon killed between attach and detach: the next start releases the device it had attached (or adopts the mount), and touches no device attached by hand", async () => {
  await withRoot("attachcrash", async (root, track) => {
    const lost = makeImage(root, path.join(root.data, "lost.sqfs"), { "a.txt": "lost" });
    const mounted = makeImage(root, path.join(root.data, "mounted.sqfs"), { "a.txt": "mounted" });
    const byHand = makeImage(root, path.join(root.work, "byhand.sqfs"), { "a.txt": "by hand" });
    // What a daemon killed mid-tick leaves: its journal, a device attached and not mounted, one mounted and not detached.
    const attached = execFileSync("losetup", ["--find", "--show", "--read-only", "--", lost], { encoding: "utf8" }).trim();
    const mountedDev = execFileSync("losetup", ["--find", "--show", "--read-only", "--", mounted], { encoding: "utf8" }).trim();
    mkdirSync(path.join(root.mnt, "mounted"));
    execFileSync("mount", ["-t", "squashfs", "-o", "ro,nosuid,nodev", mountedDev, path.join(root.mnt, "mounted")]);
    const handDev = execFileSync("losetup", ["--find", "--show", "--read-only", "--", byHand], { encoding: "utf8" }).trim();
    mkdirSync(path.join(root.root, "run"), { recursive: true });
    writeFileSync(path.join(root.root, "run", "attaching.json"), JSON.stringify([lost, mounted]));
    const mountId = stackAt(path.join(root.mnt, "mounted"))[0]?.id;
    try {
      const d = track(Daemon.start(root));
      const released = await d.waitForLog("released", (l) => l.msg.startsWith("released loop devices"));
      assert.deepEqual((released.devices as string[]).sort(), [path.basename(attached), path.basename(mountedDev)].sort());
      await waitUntil("lost mounted afresh", () => stackAt(path.join(root.mnt, "lost")).length === 1);
      assert.equal(loopsOf(lost).length, 1, "the orphan device is gone; one device, the new mount's");
      assert.notEqual(path.basename(stackAt(path.join(root.mnt, "lost"))[0]?.source ?? ""), "", "mounted");
      assert.equal(stackAt(path.join(root.mnt, "mounted"))[0]?.id, mountId, "the mount made before the crash is adopted as is");
      assert.ok(isSet((loopsOf(mounted)[0] as LoopInfo).autoclear), "...and its device now has autoclear");
      assert.equal(loopsOf(byHand).length, 1, "a device attached by hand is left alone");
      assert.ok(!existsSync(path.join(root.root, "run", "attaching.json")), "the journal is cleared");
    } finally {
      spawnSync("losetup", ["--detach", handDev]);
    }
  });
});

test("READY=1 at once with hundreds of new images; mounting goes on behind, its progress in STATUS= and in status", async () => {
  await withRoot("ready", async (root, track) => {
    const one = makeImage(root, path.join(root.work, "one.sqfs"), { "id.txt": "same" });
    const N = 300;
    for (let i = 0; i < N; i++) copyFileSync(one, path.join(root.data, `m${String(i).padStart(3, "0")}.sqfs`));
    const notify = path.join(root.root, "notify.log");
    const started = Date.now();
    const d = track(Daemon.start(root, { interval: 0.3 }, { bin: { "systemd-notify": `echo "$(date +%s%3N) $*" >> ${notify}` }, env: { NOTIFY_SOCKET: "/run/systemd/notify-test" } }));
    await waitUntil("READY=1", () => existsSync(notify) && readFileSync(notify, "utf8").includes("READY=1"), 15_000);
    const readyAt = Number(readFileSync(notify, "utf8").split("\n")[0]?.split(" ")[0]);
    const mountedAtReady = d.logs.filter((l) => l.msg === "mounted image").length;
    assert.ok(mountedAtReady < N, `READY=1 before every image was mounted (${mountedAtReady} of ${N})`);
    assert.ok(readyAt - started < 5000, `READY=1 ${readyAt - started} ms after start`);
    await waitUntil("progress in STATUS=", () => /STATUS=mounting \d+ of 300, /.test(readFileSync(notify, "utf8")), 15_000);
    const during = statusJson(root);
    assert.ok(during.mounting === undefined || (during.mounting.total === N && during.mounting.mounted < N), JSON.stringify(during.mounting));
    await waitUntil("all mounted", () => d.logs.filter((l) => l.msg === "mounted image").length === N, 120_000);
    await waitTicks(d, 2);
    assert.equal(statusJson(root).mounting, undefined, "no progress shown once done");
    assert.equal(d.logs.filter((l) => l.level === "error").length, 0);
  });
});

test("datadir listed only when it changed: a quiet datadir costs the file server the same few operations a tick with 10 or 40 images; added, deleted, replaced, written in place, all seen", async () => {
  await withRoot("changes", async (root, track) => {
    const counts = path.join(root.root, "counts.json");
    const fs = await FaultFs.start(root, root.data, { counts });
    const versions = [1, 2].map((v) => makeImage(root, path.join(root.work, `v${v}.sqfs`), { "v.txt": `v${v}`, "pad.bin": v * 8192 }));
    const place = (name: string, v: number) => {
      // Through the mount, as a client of the file server: a hidden temporary name, then a rename.
      const tmp = path.join(root.data, `.tmp-${name}`);
      copyFileSync(versions[v - 1] as string, tmp);
      const old = new Date(Date.now() - 3600_000);
      utimesSync(tmp, old, old);
      renameSync(tmp, path.join(root.data, `${name}.sqfs`));
    };
    for (let i = 0; i < 10; i++) place(`a${i}`, 1);
    const d = track(Daemon.start(root, { interval: 0.3, rescan_interval: 600 }));
    await waitUntil("10 mounted", () => d.logs.filter((l) => l.msg === "mounted image").length === 10, 20_000);
    const quietOps = async (): Promise<number> => {
      // The directory is listed again for a couple of seconds after it last changed (mtimes may be to the second).
      await sleep(3000);
      await waitTicks(d, 2);
      const before = (JSON.parse(readFileSync(counts, "utf8")) as { ops: Record<string, number> }).ops;
      const t0 = ticks(d);
      await waitTicks(d, 8);
      await sleep(300);
      const after = (JSON.parse(readFileSync(counts, "utf8")) as { ops: Record<string, number> }).ops;
      const total = (o: Record<string, number>) => Object.values(o).reduce((s, n) => s + n, 0);
      return (total(after) - total(before)) / (ticks(d) - t0);
    };
    const with10 = await quietOps();
    for (let i = 0; i < 30; i++) place(`b${i}`, 1);
    await waitUntil("40 mounted", () => d.logs.filter((l) => l.msg === "mounted image").length === 40, 30_000);
    const with40 = await quietOps();
    assert.ok(with10 <= 6, `a quiet tick with 10 images: ${with10.toFixed(1)} operations on the file server`);
    assert.ok(with40 <= with10 + 1.5, `the same with 40 images: ${with40.toFixed(1)} against ${with10.toFixed(1)}`);

    // Added, deleted, replaced: each seen within a few ticks of the directory changing.
    place("new", 1);
    await waitUntil("an added image mounted", () => stackAt(path.join(root.mnt, "new")).length === 1, 10_000);
    rmSync(path.join(root.data, "a0.sqfs"));
    await waitUntil("a deleted image unmounted", () => stackAt(path.join(root.mnt, "a0")).length === 0, 10_000);
    place("a1", 2);
    await waitUntil("a replaced image served in its new version", () => existsSync(path.join(root.mnt, "a1", "v.txt")) && readFileSync(path.join(root.mnt, "a1", "v.txt"), "utf8") === "v2", 10_000);
    // Written in place: a new file written slowly is mounted only once complete (the directory changes once, at its creation).
    const image = readFileSync(versions[1] as string);
    const fd = openSync(path.join(root.data, "slow.sqfs"), "w");
    for (let off = 0; off < image.length; off += 4096) {
      writeSync(fd, image.subarray(off, off + 4096));
      await sleep(60);
      assert.equal(stackAt(path.join(root.mnt, "slow")).length, 0, `not mounted at ${off} bytes`);
    }
    closeSync(fd);
    await waitUntil("the image written in place mounted once stable", () => stackAt(path.join(root.mnt, "slow")).length === 1, 10_000);
    assert.equal(readFileSync(path.join(root.mnt, "slow", "v.txt"), "utf8"), "v2");
    // An existing image rewritten in place (same inode: the directory's times do not move): seen by the safety net, rescan_interval.
    writeFileSync(path.join(root.root, "scratch_manager.conf"), Daemon.standardConfig(root, { interval: 0.3, rescan_interval: 2 }));
    d.signal("SIGHUP");
    await d.waitForLog("reloaded", (l) => l.msg === "configuration reloaded");
    const rewritten = path.join(fs.source, "a2.sqfs");
    writeFileSync(rewritten, readFileSync(versions[1] as string));
    const old = new Date(Date.now() - 3600_000);
    utimesSync(rewritten, old, old);
    await waitUntil("an image rewritten in place seen at the safety-net listing", () => existsSync(path.join(root.mnt, "a2", "v.txt")) && readFileSync(path.join(root.mnt, "a2", "v.txt"), "utf8") === "v2", 20_000);
    assert.equal(d.logs.filter((l) => l.msg === "tick failed" || l.msg === "action failed").length, 0);
  });
});

test("quiet ticks: an idle daemon keeps its last plan and only renews its report; a read, a new image, a pin each bring a full tick at once", async () => {
  await withRoot("quiet", async (root, track) => {
    const MB = 1024 * 1024;
    for (const name of ["alpha", "beta", "gamma"]) makeImage(root, path.join(root.data, `${name}.sqfs`), { "data.bin": 2 * MB, "id.txt": name });
    const d = track(Daemon.start(root, { period: 3, capacity: "64MB" }));
    const quiet = () => d.logs.filter((l) => l.msg === "tick" && l.quiet === true).length;
    await waitUntil("quiet ticks once everything is mounted and nothing was read for a window", () => quiet() >= 3, 30_000);
    const before = statusJson(root);
    assert.equal(before.datasets.length, 3);
    assert.ok(before.datasets.every((s) => s.state === "slow"), "nothing read: nothing cached");
    await sleep(1000);
    const later = statusJson(root);
    assert.ok(later.writtenAt > before.writtenAt && later.tick.count > before.tick.count, "the report is renewed by quiet ticks");
    assert.deepEqual(later.datasets, before.datasets, "with the same datasets");

    // A read: seen at the next sample of its counter, planned at once (it becomes hot and is cached).
    const reader = startReader(path.join(root.mnt, "beta"));
    await waitUntil("beta cached after it was read", () => stackAt(path.join(root.mnt, "beta")).length === 2, 40_000);
    await reader.stop();
    // A new image: a new listing of datadir, a full tick.
    makeImage(root, path.join(root.data, "delta.sqfs"), { "id.txt": "delta" });
    await waitUntil("delta mounted", () => existsSync(path.join(root.mnt, "delta", "id.txt")), 20_000);
    // A pin: the pins change, a full tick.
    const pin = spawnSync(process.execPath, [CLI, "pin", "gamma", "--state-dir", path.join(root.root, "state")], { encoding: "utf8" });
    assert.equal(pin.status, 0, pin.stderr);
    await waitUntil("gamma cached once pinned", () => stackAt(path.join(root.mnt, "gamma")).length === 2, 20_000);
    // Quiet again once nothing is read for a window.
    const q = quiet();
    await waitUntil("quiet again", () => quiet() >= q + 3, 40_000);
    assert.equal(readFileSync(path.join(root.mnt, "gamma", "id.txt"), "utf8"), "gamma");
  });
});

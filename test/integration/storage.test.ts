/**
 * Issue 10: the shared storage in trouble (a hang, I/O errors, a vanished
 * file system) loses nothing. datadir is a real FUSE file system
 * (test/fixtures/faultfs.py) told to hang, to fail with EIO, or unmounted;
 * real images, real loop mounts, the real daemon.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import type { StatusReport } from "../../src/report/status.js";
import { CLI, Daemon, FaultFs, makeImage, makeSmallFs, mountsUnder, readHard, stackAt, deviceReadBytes, waitUntil, withRoot, type MountRow, type TestRoot } from "./harness.js";

const MB = 1024 * 1024;
const NAMES = ["alpha", "beta", "gamma", "delta"];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The trouble must be seen quickly in a test: the scan deadline and the copy stall cut are short. */
const SETTINGS = { scan_timeout: 2, command_timeout: 3, pin: "alpha", capacity: "64MB" };

function statusJson(root: TestRoot): StatusReport {
  const r = spawnSync(process.execPath, [CLI, "status", "--json", "--runtime-dir", path.join(root.root, "run")], { encoding: "utf8", timeout: 10_000 });
  assert.equal(r.status, 0, `status --json: ${r.stderr}`);
  return JSON.parse(r.stdout) as StatusReport;
}

function statusText(root: TestRoot): string {
  const r = spawnSync(process.execPath, [CLI, "status", "--runtime-dir", path.join(root.root, "run")], { encoding: "utf8", timeout: 10_000 });
  assert.equal(r.status, 0, `status: ${r.stderr}`);
  return r.stdout;
}

/** Four datasets on a FUSE datadir, alpha cached (pinned), the others slow. */
async function setUp(root: TestRoot, track: (d: Daemon) => Daemon, extra: Record<string, string | number> = {}): Promise<{ fs: FaultFs; d: Daemon }> {
  const fs = await FaultFs.start(root, root.data);
  for (const name of NAMES) makeImage(root, path.join(fs.source, `${name}.sqfs`), { "data.bin": 2 * MB, "id.txt": name });
  const d = track(Daemon.start(root, { ...SETTINGS, ...extra }));
  await waitUntil("alpha cached, the others mounted", () => stackAt(path.join(root.mnt, "alpha")).length === 2 && NAMES.every((n) => stackAt(path.join(root.mnt, n)).length >= 1), 30_000);
  return { fs, d };
}

/** Mount IDs under mountdir: unchanged means nothing was unmounted or mounted again. */
const mountIds = (root: TestRoot) => mountsUnder(root.mnt).map((m) => `${m.target}#${m.id}`).sort();

/**
 * What must hold while datadir is in trouble: the daemon alive and ticking
 * (its status file rewritten), every mount and the cached file in place,
 * and the cached dataset served from the cache's loop device.
 */
async function assertServing(root: TestRoot, d: Daemon, mountsBefore: string[]): Promise<void> {
  const first = statusJson(root).writtenAt;
  await waitUntil("status file rewritten during the trouble", () => statusJson(root).writtenAt > first + 500, 10_000, 200);
  assert.equal(d.child.exitCode, null, "the daemon is alive");
  assert.deepEqual(mountIds(root), mountsBefore, "every mount in place, none redone");
  assert.ok(existsSync(path.join(root.cache, "alpha.sqfs")), "the cached copy is still there");
  const top = stackAt(path.join(root.mnt, "alpha")).at(-1) as MountRow;
  const before = deviceReadBytes(top.source);
  const read = readHard(path.join(root.mnt, "alpha"));
  assert.ok(deviceReadBytes(top.source) - before >= 2 * MB, `alpha read from the cache's loop device (${read} bytes read)`);
}

/** After the trouble: the info line, nothing copied again, and a real deletion honoured within a few ticks. */
async function assertRecovered(root: TestRoot, fs: FaultFs, d: Daemon, copiesBefore: number, cause: string): Promise<void> {
  const back = await d.waitForLog("datadir available again", (l) => l.msg === "datadir available again", 20_000);
  assert.equal(back.was, cause);
  assert.ok(typeof back.outageMs === "number" && back.outageMs > 0, `outage duration logged (${String(back.outageMs)})`);
  await waitUntil("status says datadir is available", () => statusJson(root).storage?.datadir.available === true, 10_000, 200);
  rmSync(path.join(fs.source, "beta.sqfs"));
  await waitUntil("beta unmounted after its image was deleted", () => stackAt(path.join(root.mnt, "beta")).length === 0, 15_000);
  assert.equal(statusJson(root).copies.started, copiesBefore, "nothing copied again");
  assert.equal(stackAt(path.join(root.mnt, "alpha")).length, 2, "alpha still cached");
  assert.equal(readFileSync(path.join(root.mnt, "gamma", "id.txt"), "utf8"), "gamma", "the slow datasets read again");
}

test("datadir hangs (a hard NFS mount, server down): the loop ticks on, nothing lost, one warning; back: nothing re-copied, a deletion honoured", async () => {
  await withRoot("hang", async (root, track) => {
    const { fs, d } = await setUp(root, track);
    const mounts = mountIds(root);
    const copies = statusJson(root).copies.started;
    await fs.set("hang");
    const warned = await d.waitForLog("datadir unavailable", (l) => l.level === "warn" && l.msg.startsWith("datadir unavailable"), 15_000);
    assert.equal(warned.reason, "NotResponding");
    assert.match(String(warned.cause), /not answering for \d+ s|did not finish/);
    assert.equal(warned.path, root.data);
    await assertServing(root, d, mounts);
    const status = statusJson(root);
    assert.equal(status.storage?.datadir.available, false);
    assert.equal(status.storage?.datadir.reason, "NotResponding");
    assert.match(statusText(root), /^datadir .* UNAVAILABLE since .*: not answering/m);
    await sleep(3000);
    assert.equal(d.logs.filter((l) => l.msg.startsWith("datadir unavailable")).length, 1, "said once, not every tick");
    assert.equal(d.logs.filter((l) => l.msg === "tick failed").length, 0, "no tick failed");
    await fs.set("ok");
    await assertRecovered(root, fs, d, copies, "NotResponding");
  });
});

test("datadir fails with EIO (a soft mount timing out): said once with the errno; nothing lost; back cleanly", async () => {
  await withRoot("eio", async (root, track) => {
    const { fs, d } = await setUp(root, track);
    const mounts = mountIds(root);
    const copies = statusJson(root).copies.started;
    await fs.set("eio");
    const warned = await d.waitForLog("datadir unavailable", (l) => l.level === "warn" && l.msg.startsWith("datadir unavailable"), 10_000);
    assert.equal(warned.reason, "IOError");
    assert.match(String(warned.cause), /^EIO: /);
    await assertServing(root, d, mounts);
    await sleep(2000);
    assert.equal(d.logs.filter((l) => l.msg.startsWith("datadir unavailable")).length, 1, "said once");
    assert.equal(d.logs.filter((l) => l.msg === "tick failed").length, 0, "no 'tick failed' every tick");
    assert.equal(d.logs.filter((l) => l.msg === "unmounted" || l.msg === "deleted cache file" || l.msg === "image refused").length, 0, "nothing unmounted, deleted or refused");
    await fs.set("ok");
    await assertRecovered(root, fs, d, copies, "IOError");
  });
});

test("datadir vanishes (unmounted: an empty directory beneath): FilesystemChanged, nothing lost; mounted again: its old mounts are still the daemon's own, across a restart too", async () => {
  await withRoot("vanish", async (root, track) => {
    const { fs, d } = await setUp(root, track);
    const mounts = mountIds(root);
    const copies = statusJson(root).copies.started;
    fs.unmountLazy();
    const warned = await d.waitForLog("datadir unavailable", (l) => l.level === "warn" && l.msg.startsWith("datadir unavailable"), 10_000);
    assert.equal(warned.reason, "FilesystemChanged");
    await assertServing(root, d, mounts);
    assert.equal(d.logs.filter((l) => l.msg === "deleted cache file" || l.msg === "unmounted").length, 0, "nothing deleted or unmounted");
    // Mounted again: a new FUSE mount, another device; the loop devices still hold the old one's files ("/alpha.sqfs").
    await fs.mount();
    await assertRecovered(root, fs, d, copies, "FilesystemChanged");
    assert.equal(d.logs.filter((l) => l.level === "warn" && String(l.msg).includes("not ours")).length, 0, "no mount taken for someone else's");
    assert.deepEqual(
      mountIds(root),
      mounts.filter((m) => !m.startsWith(`${path.join(root.mnt, "beta")}#`)),
      "every other mount kept as it was",
    );
    // A restart knows the old device too (state_dir/datadir.json): gamma's old mount is adopted, then its deletion honoured.
    await d.stop();
    const again = track(Daemon.start(root, SETTINGS));
    await again.waitForLog("a few ticks", () => again.logs.filter((l) => l.msg === "tick").length >= 5);
    assert.deepEqual(
      mountIds(root),
      mounts.filter((m) => !m.startsWith(`${path.join(root.mnt, "beta")}#`)),
      "the restart kept every mount",
    );
    rmSync(path.join(fs.source, "gamma.sqfs"));
    await waitUntil("gamma unmounted", () => stackAt(path.join(root.mnt, "gamma")).length === 0, 15_000);
    assert.equal(statusJson(root).copies.started, 0, "the restarted daemon copied nothing");
  });
});

test("SIGTERM while datadir hangs: the daemon exits at once, mounts in place; started while it hangs, it adopts what is mounted", async () => {
  await withRoot("hangstop", async (root, track) => {
    const { fs, d } = await setUp(root, track);
    const mounts = mountIds(root);
    await fs.set("hang");
    await d.waitForLog("datadir unavailable", (l) => l.msg.startsWith("datadir unavailable"), 15_000);
    const asked = Date.now();
    d.signal("SIGTERM");
    const { code } = await d.exit(20_000);
    const took = Date.now() - asked;
    assert.equal(code, 0, "a clean exit");
    assert.ok(took < 10_000, `stopped in ${took} ms, well within the unit's TimeoutStopSec (30 s)`);
    assert.deepEqual(mountIds(root), mounts, "every mount left in place");

    const notify = path.join(root.root, "notify.log");
    const again = track(
      Daemon.start(root, SETTINGS, { bin: { "systemd-notify": `echo "$*" >> ${notify}` }, env: { NOTIFY_SOCKET: "/run/systemd/notify-test" } }),
    );
    await waitUntil("READY=1 while datadir hangs", () => existsSync(notify) && readFileSync(notify, "utf8").includes("READY=1"), 15_000);
    await again.waitForLog("datadir unavailable at start", (l) => l.msg.startsWith("datadir unavailable"), 15_000);
    await waitUntil("STATUS= says so", () => /STATUS=datadir unavailable \(not answering/.test(readFileSync(notify, "utf8")), 10_000);
    const status = statusJson(root);
    assert.deepEqual(status.datasets.map((s) => [s.name, s.state]).sort(), [["alpha", "cached"], ["beta", "slow"], ["delta", "slow"], ["gamma", "slow"]], "the mounted datasets are adopted and shown");
    assert.deepEqual(mountIds(root), mounts, "nothing redone");
    await fs.set("ok");
    await again.waitForLog("back", (l) => l.msg === "datadir available again", 20_000);
    await again.waitForLog("a few ticks", () => again.logs.filter((l) => l.msg === "tick").length >= 10);
    assert.deepEqual(mountIds(root), mounts, "nothing redone once it is back");
    assert.equal(again.logs.filter((l) => l.msg === "copy started").length, 0, "nothing copied again");
  });
});

test("as after a reboot with the file server not mounted yet: datadir is the empty directory beneath, the cached copy is kept, and used once it is back", async () => {
  await withRoot("boot", async (root, track) => {
    const { fs, d } = await setUp(root, track);
    await d.stop();
    // The "reboot": every mount gone, the file server not mounted; the cache (local SSD) kept.
    for (const m of mountsUnder(root.mnt).reverse()) spawnSync("umount", [m.target]);
    await waitUntil("no mount left", () => mountsUnder(root.mnt).length === 0);
    spawnSync("umount", [root.data]);
    const again = track(Daemon.start(root, SETTINGS));
    const warned = await again.waitForLog("datadir unavailable", (l) => l.msg.startsWith("datadir unavailable"), 10_000);
    assert.equal(warned.reason, "FilesystemChanged");
    assert.match(String(warned.cause), /no longer a mount point/);
    await again.waitForLog("a few ticks", () => again.logs.filter((l) => l.msg === "tick").length >= 5);
    assert.ok(existsSync(path.join(root.cache, "alpha.sqfs")), "the cached copy was not taken for one that belongs to no image");
    await fs.mount();
    await waitUntil("alpha served from its kept copy", () => stackAt(path.join(root.mnt, "alpha")).length === 2, 15_000);
    assert.equal(again.logs.filter((l) => l.msg === "copy started").length, 0, "not copied again");
  });
});

test("a datadir that does not exist at start (an automounted server down at boot): the daemon starts, says so, and serves it once it appears", async () => {
  await withRoot("missing", async (root, track) => {
    const datadir = path.join(root.root, "not-yet");
    const d = track(Daemon.start(root, { ...SETTINGS, datadir }));
    const warned = await d.waitForLog("datadir missing", (l) => l.msg.startsWith("datadir unavailable"), 10_000);
    assert.equal(warned.reason, "Missing");
    assert.equal(d.child.exitCode, null, "not a configuration error (exit 2)");
    assert.equal(statusJson(root).storage?.datadir.reason, "Missing");
    mkdirSync(datadir);
    makeImage(root, path.join(datadir, "alpha.sqfs"), { "id.txt": "alpha" });
    await waitUntil("alpha mounted once datadir appeared", () => stackAt(path.join(root.mnt, "alpha")).length >= 1, 15_000);
    assert.equal(readFileSync(path.join(root.mnt, "alpha", "id.txt"), "utf8"), "alpha");
  });
});

test("most images vanishing at once is held back until confirmed by a reload; a single deletion is not", async () => {
  await withRoot("massvanish", async (root, track) => {
    const { fs, d } = await setUp(root, track);
    const mounts = mountIds(root);
    rmSync(path.join(fs.source, "delta.sqfs"));
    await waitUntil("one deletion honoured", () => stackAt(path.join(root.mnt, "delta")).length === 0, 15_000);
    const away = path.join(root.root, "away");
    mkdirSync(away);
    for (const n of ["alpha", "beta", "gamma"]) renameSync(path.join(fs.source, `${n}.sqfs`), path.join(away, `${n}.sqfs`));
    const warned = await d.waitForLog("held back", (l) => l.msg.startsWith("datadir unavailable"), 10_000);
    assert.equal(warned.reason, "MassDisappearance");
    assert.match(String(warned.cause), /3 of 3 known images \(alpha.sqfs, beta.sqfs, gamma.sqfs\)/);
    await sleep(2000);
    assert.deepEqual(mountIds(root), mounts.filter((m) => !m.startsWith(`${path.join(root.mnt, "delta")}#`)), "nothing unmounted while held back");
    assert.ok(existsSync(path.join(root.cache, "alpha.sqfs")), "the cached copy kept");
    d.signal("SIGHUP");
    await waitUntil("all three unmounted once confirmed", () => ["alpha", "beta", "gamma"].every((n) => stackAt(path.join(root.mnt, n)).length === 0), 15_000);
    await waitUntil("alpha's copy deleted", () => !existsSync(path.join(root.cache, "alpha.sqfs")), 10_000);
  });
});

test("the cache device fails (reads of cachedir return EIO): within seconds the cache overmounts come off and new opens read the slow tier; nothing is copied or deleted; once it reads again the cache resumes", async () => {
  await withRoot("cacheeio", async (root, track) => {
    const cachedir = path.join(root.root, "ssd");
    // direct_io: no page cache in front of the copies, so that every read reaches the failing "device".
    const cacheFs = await FaultFs.start(root, cachedir, { directIo: true });
    for (const name of NAMES) makeImage(root, path.join(root.data, `${name}.sqfs`), { "data.bin": 2 * MB, "id.txt": name });
    const d = track(Daemon.start(root, { ...SETTINGS, cachedir }));
    const alpha = path.join(root.mnt, "alpha");
    const stack = await waitUntil("alpha cached on the FUSE cachedir", () => (stackAt(alpha).length === 2 ? stackAt(alpha) : undefined), 30_000);
    const slow = (stack[0] as MountRow).source;
    const copiesBefore = d.logs.filter((l) => l.msg === "copy started").length;
    const failedAt = Date.now();
    await cacheFs.set("eio");
    const warned = await d.waitForLog("cache device failing", (l) => l.msg.startsWith("cache device failing"), 20_000);
    await waitUntil("alpha's cache overmount taken off", () => stackAt(alpha).length === 1, 20_000);
    const fellBackMs = Date.now() - failedAt;
    // The bound (docs/storage-failures.md): a probe round every 5 s, then one tick.
    assert.ok(fellBackMs < 12_000, `new opens read the slow tier ${fellBackMs} ms after the first error`);
    process.stderr.write(`cache device failing -> slow tier in ${fellBackMs} ms\n`);
    // The probes' read, or the kernel's own report of the cache loop device's failed reads (whichever came first).
    assert.match(String(warned.evidence), /\(EIO\)|^kernel: I\/O error, dev loop\d+/);
    const slowBefore = deviceReadBytes(slow);
    assert.equal(readFileSync(path.join(alpha, "id.txt"), "utf8"), "alpha", "a new open reads the right bytes");
    assert.equal(readHard(alpha), 2 * MB + 5);
    assert.ok(deviceReadBytes(slow) - slowBefore >= 2 * MB, "through the slow loop device");
    const status = statusJson(root);
    assert.equal(status.cacheDevice?.up, false);
    assert.equal(status.cacheDevice?.reason, "CacheDeviceFailing");
    assert.match(status.datasets.find((x) => x.name === "alpha")?.note ?? "", /^served from the slow tier: the cache device is failing/);
    assert.match(statusText(root), /^cache device FAILING since /m);
    await sleep(3000);
    assert.equal(d.logs.filter((l) => l.msg === "copy started").length, copiesBefore, "no copy onto the failing device");
    assert.equal(d.logs.filter((l) => l.msg === "deleted cache file").length, 0, "nothing deleted");
    assert.equal(d.logs.filter((l) => l.msg.startsWith("cache device failing")).length, 1, "said once");
    assert.ok(d.logs.filter((l) => l.msg === "tick").length > 0 && statusJson(root).writtenAt > failedAt, "the daemon ticks and reports");
    await cacheFs.set("ok");
    await d.waitForLog("cache device working again", (l) => l.msg.startsWith("cache device working again"), 30_000);
    await waitUntil("alpha cached again, without a restart", () => stackAt(alpha).length === 2, 30_000);
    assert.ok(existsSync(path.join(cacheFs.source, "alpha.sqfs")), "the copy was kept");
  });
});

test("the cache file system remounted read-only (as ext4 does after an error): the cached copies stay served, nothing is copied or deleted, the condition says ReadOnly; writable again, the cache resumes", async () => {
  await withRoot("cachero", async (root, track) => {
    const cachedir = makeSmallFs(root, "ssd", 64);
    for (const name of NAMES) makeImage(root, path.join(root.data, `${name}.sqfs`), { "data.bin": 2 * MB, "id.txt": name });
    const d = track(Daemon.start(root, { ...SETTINGS, cachedir }));
    const alpha = path.join(root.mnt, "alpha");
    await waitUntil("alpha cached on the ext4 cachedir", () => stackAt(alpha).length === 2, 30_000);
    const copiesBefore = d.logs.filter((l) => l.msg === "copy started").length;
    execFileSync("mount", ["-o", "remount,ro", cachedir]);
    const warned = await d.waitForLog("cache file system read-only", (l) => l.msg.startsWith("cache file system read-only"), 15_000);
    assert.equal(warned.reason, "ReadOnly");
    // beta is now wanted in the cache (pinned by a reload): no copy is attempted onto the read-only file system.
    writeFileSync(path.join(root.root, "scratch_manager.conf"), Daemon.standardConfig(root, { ...SETTINGS, cachedir, pin: "alpha, beta" }));
    d.signal("SIGHUP");
    await sleep(4000);
    assert.equal(d.logs.filter((l) => l.msg === "copy started").length, copiesBefore, "no copy onto the read-only file system");
    assert.equal(d.logs.filter((l) => l.msg === "deleted cache file").length, 0, "nothing deleted");
    const top = stackAt(alpha).at(-1) as MountRow;
    const before = deviceReadBytes(top.source);
    assert.equal(readHard(alpha), 2 * MB + 5, "the cached copy is read");
    assert.ok(deviceReadBytes(top.source) - before >= 2 * MB, "through the cache's loop device");
    const status = statusJson(root);
    assert.equal(status.cacheDevice?.reason, "ReadOnly");
    assert.equal(status.cacheDevice?.up, true, "reads of the cache device still succeed");
    assert.match(statusText(root), /^cache file system READ-ONLY since /m);
    execFileSync("mount", ["-o", "remount,rw", cachedir]);
    await d.waitForLog("cache file system writable again", (l) => l.msg.startsWith("cache file system writable again"), 15_000);
    await waitUntil("beta cached once writable", () => stackAt(path.join(root.mnt, "beta")).length === 2, 30_000);
    assert.equal(statusJson(root).cacheDevice?.reason, "Working");
  });
});

test("the kernel reports a job's failed read of the cache device (/dev/kmsg): the cache mounts come off at the next tick, before any probe reads it", async () => {
  await withRoot("kmsg", async (root, track) => {
    const cachedir = path.join(root.root, "ssd");
    const cacheFs = await FaultFs.start(root, cachedir, { directIo: true });
    makeImage(root, path.join(root.data, "alpha.sqfs"), { "a.bin": 2 * MB, "b.bin": 2 * MB });
    // scan_timeout 60: a probe round every 5 s, so that a job's read lands well between two.
    const d = track(Daemon.start(root, { ...SETTINGS, scan_timeout: 60, cachedir }));
    const alpha = path.join(root.mnt, "alpha");
    await waitUntil("alpha cached on the FUSE cachedir", () => stackAt(alpha).length === 2, 30_000);
    // Right after a probe round: the next is 5 s away.
    const rounds = () => d.logs.filter((l) => l.msg === "probe round").length;
    const seen = rounds();
    await waitUntil("a probe round", () => rounds() > seen, 10_000, 20);
    await cacheFs.set("eio");
    const failedAt = Date.now();
    assert.throws(() => readFileSync(path.join(alpha, "b.bin")), /EIO|input\/output error/i, "the job's read fails: its file was opened on the failing cache layer");
    const warned = await d.waitForLog("cache device failing", (l) => l.msg.startsWith("cache device failing"), 10_000);
    const ms = Date.now() - failedAt;
    assert.match(String(warned.evidence), /^kernel: I\/O error, dev loop\d+, sector/, "the kernel's report, not a probe's read");
    assert.ok(ms < 3000, `fell back ${ms} ms after the job's failed read`);
    process.stderr.write(`kernel report -> cache device failing in ${ms} ms\n`);
    await waitUntil("alpha's cache overmount taken off", () => stackAt(alpha).length === 1, 10_000);
    assert.equal(readFileSync(path.join(alpha, "b.bin")).length, 2 * MB, "a new open reads the slow tier");
  });
});

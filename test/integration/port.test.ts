/** Issue 2: the port runs end to end on real loop mounts. */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, openSync, readFileSync, readSync, closeSync, readdirSync, renameSync, rmSync, statSync, utimesSync, writeFileSync, mkdirSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { backingFileOf, CLI, Daemon, deviceReadBytes, makeImage, mountsUnder, readHard, stackAt, startReader, waitUntil, withRoot, type MountRow } from "./harness.js";

const MB = 1024 * 1024;

/*
 * Only reads seen between two ticks count (a loop device's counter is not
 * reset when it is re-attached), so a dataset is made hot by a reader that
 * keeps reading, as a job does, not by one read right after the mount.
 */

test("a bad config value exits 2 with one line naming the key and the accepted forms, and mounts nothing", async () => {
  await withRoot("badconf", async (root) => {
    makeImage(root, path.join(root.data, "alpha.sqfs"), { "a.txt": "alpha" });
    const cases: [string, RegExp][] = [
      ["capacity = 12XB", /^scratch_manager: config: \S+\/bad\.conf:\d+: capacity = "12XB" is not valid; expected .*MB.*GB.*TB.*%/],
      ["capacity = 0", /capacity = "0" is not valid/],
      ["capacity = 150%", /capacity = "150%" is not valid/],
      ["period = soon", /period = "soon" is not valid; expected a positive duration/],
      ["interval = -1", /interval = "-1" is not valid/],
      ["naming = whatever", /naming = "whatever" is not valid; expected first-dot or strip-extension/],
      ["capacty = 1GB", /unknown key "capacty"; did you mean capacity\?/],
    ];
    for (const [line, expected] of cases) {
      const conf = path.join(root.root, "bad.conf");
      const base = Daemon.standardConfig(root).split("\n").filter((l) => !l.startsWith(line.split(" ")[0] as string)).join("\n");
      writeFileSync(conf, `${base}\n${line}\n`);
      const r = spawnSync(process.execPath, [CLI, "--config", conf], { encoding: "utf8", timeout: 10_000 });
      assert.equal(r.status, 2, `${line}: exit status`);
      assert.equal(r.stderr.trim().split("\n").length, 1, `${line}: one line, got ${r.stderr}`);
      assert.match(r.stderr.trim(), expected, line);
      assert.deepEqual(mountsUnder(root.root), [], `${line}: nothing mounted`);
    }
    const missing = spawnSync(process.execPath, [CLI, "--config", path.join(root.root, "nope.conf")], { encoding: "utf8" });
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /cannot read .*nope\.conf/);
  });
});

test("--help works and flags override the file", async () => {
  const help = spawnSync(process.execPath, [CLI, "run", "--help"], { encoding: "utf8" });
  assert.equal(help.status, 0);
  for (const flag of ["--config", "--datadir", "--cachedir", "--mountdir", "--capacity", "--period", "--interval", "--verbose"]) assert.ok(help.stdout.includes(flag), flag);
  await withRoot("flags", async (root, track) => {
    makeImage(root, path.join(root.data, "alpha.sqfs"), { "big.bin": 4 * MB });
    // The file's capacity is too small to cache alpha; the flag's is not.
    const d = track(new Daemon(root, { config: Daemon.standardConfig(root, { capacity: "1MB" }), args: ["--capacity", "64MB", "--interval", "0.3"] }));
    await d.waitForLog("starting", (l) => l.msg === "starting");
    assert.equal(d.find((l) => l.msg === "starting")?.capacity, "64.0 MiB");
    assert.equal(d.find((l) => l.msg === "starting")?.policy, "adaptive");
    startReader(path.join(root.mnt, "alpha"));
    await waitUntil("alpha cached", () => stackAt(path.join(root.mnt, "alpha")).length === 2);
  });
});

test("an image moved into datadir is mounted ro,nosuid,nodev at mountdir/<name up to the first dot>; removing it unmounts and deletes its copy", async () => {
  await withRoot("discovery", async (root, track) => {
    const d = track(Daemon.start(root, { capacity: "64MB" }));
    await d.waitForLog("first tick", (l) => l.msg === "tick");
    makeImage(root, path.join(root.data, "coco.2017.sqfs"), { "hello.txt": "hello coco", "big.bin": 2 * MB });
    const target = path.join(root.mnt, "coco");
    const [slow] = await waitUntil("coco mounted", () => stackAt(target)[0] && stackAt(target));
    assert.equal(slow?.fstype, "squashfs");
    for (const opt of ["ro", "nosuid", "nodev"]) assert.ok(slow?.options.split(",").includes(opt), `${opt} in ${slow?.options}`);
    assert.equal(backingFileOf(slow as MountRow), path.join(root.data, "coco.2017.sqfs"));
    assert.equal(readFileSync(path.join(target, "hello.txt"), "utf8"), "hello coco");
    const mounted = await d.waitForLog("mounted image", (l) => l.msg === "mounted image");
    assert.equal(mounted?.dataset, "coco");

    const reader = startReader(target);
    await waitUntil("coco cached", () => existsSync(path.join(root.cache, "coco.2017.sqfs")) && stackAt(target).length === 2);
    await reader.stop();
    rmSync(path.join(root.data, "coco.2017.sqfs"));
    await waitUntil("coco unmounted", () => stackAt(target).length === 0);
    await waitUntil("cached copy deleted", () => !existsSync(path.join(root.cache, "coco.2017.sqfs")));
    await waitUntil("mount point removed", () => !existsSync(target));
    await d.waitForLog("unmounted: image removed", (l) => l.msg === "unmounted" && l.reason === "image removed", 5000);
  });
});

test("a read dataset is copied, verified and mounted over its slow mount; open files stay readable and new opens read from the cache", async () => {
  await withRoot("overmount", async (root, track) => {
    makeImage(root, path.join(root.data, "imagenet.sqfs"), { "early.txt": "opened before the overmount", "a.bin": 8 * MB, "b.bin": 8 * MB });
    const target = path.join(root.mnt, "imagenet");
    // A throttled copy (4 MiB/s) leaves time to open a file on the slow mount first.
    const d = track(Daemon.start(root, { capacity: "64MB" }, { copyKBps: 4096 }));
    await waitUntil("slow mount", () => stackAt(target).length === 1);
    const slowSource = (stackAt(target)[0] as MountRow).source;
    const fd = openSync(path.join(target, "early.txt"), "r");
    try {
      assert.equal(stackAt(target).length, 1, "opened on the slow mount");
      // The job reads a.bin only, so b.bin is first read on the cache mount below. The
      // job is killed mid-file, and its dd drops only the pages it has finished with:
      // readahead it left in the page cache would not reach the loop device again.
      const reader = startReader(path.join(target, "a.bin"));
      await d.waitForLog("copy finished", (l) => l.msg === "copy finished", 30_000);
      const finished = d.find((l) => l.msg === "copy finished") as unknown as { ms: number; mbps: number; bytes: number };
      assert.ok(finished.ms > 0 && finished.mbps > 0 && finished.bytes === statSync(path.join(root.data, "imagenet.sqfs")).size);
      const stack = await waitUntil("overmount", () => (stackAt(target).length === 2 ? stackAt(target) : undefined));
      await reader.stop();
      assert.equal(backingFileOf(stack[1] as MountRow), path.join(root.cache, "imagenet.sqfs"));
      const cached = statSync(path.join(root.cache, "imagenet.sqfs"));
      const image = statSync(path.join(root.data, "imagenet.sqfs"));
      assert.equal(cached.size, image.size);
      assert.equal(Math.floor(cached.mtimeMs / 1000), Math.floor(image.mtimeMs / 1000));
      assert.equal(cached.mode & 0o022, 0, "cache file not writable by group/others");
      assert.deepEqual(readdirSync(root.cache), ["imagenet.sqfs"], "no temporary file left");

      // The file opened before the overmount still reads, from the slow tier.
      const buf = Buffer.alloc(64);
      const n = readSync(fd, buf, 0, 64, 0);
      assert.equal(buf.subarray(0, n).toString(), "opened before the overmount");

      // A new open reads through the cache's loop device, not the slow one.
      const cacheSource = (stack[1] as MountRow).source;
      const slowBefore = deviceReadBytes(slowSource);
      const cacheBefore = deviceReadBytes(cacheSource);
      assert.equal(readHard(path.join(target, "b.bin")), 8 * MB);
      const cacheRead = deviceReadBytes(cacheSource) - cacheBefore;
      assert.ok(cacheRead >= 8 * MB, `cache loop device read b.bin (${cacheRead} bytes)`);
      assert.ok(deviceReadBytes(slowSource) - slowBefore < MB, "slow loop device did not");
      // A coming tick counts those reads; SIGUSR1 reports them (asked again until that tick has run).
      const served = await waitUntil(
        "SIGUSR1 to report the bytes read from the cache",
        () => {
          d.signal("SIGUSR1");
          return d.find((l) => l.msg === "bytes served from cache" && (l.bytes as number) >= 8 * MB);
        },
        20_000,
        300,
      );
      assert.ok((served.bytes as number) >= 8 * MB);
    } finally {
      closeSync(fd);
    }
  });
});

test("the knapsack never exceeds the capacity: a dataset larger than the room beside the cached one is never copied", async () => {
  await withRoot("knapsack", async (root, track) => {
    makeImage(root, path.join(root.data, "one.sqfs"), { "data.bin": 12 * MB });
    makeImage(root, path.join(root.data, "two.sqfs"), { "data.bin": 12 * MB, "more.bin": 12 * MB });
    const d = track(Daemon.start(root, { capacity: "20MB", period: 3 }));
    const one = path.join(root.mnt, "one");
    const two = path.join(root.mnt, "two");
    await waitUntil("both mounted", () => stackAt(one).length >= 1 && stackAt(two).length >= 1);
    startReader(one);
    await waitUntil("one cached", () => stackAt(one).length === 2);
    const fd = openSync(path.join(one, "data.bin"), "r");
    try {
      // two does not fit next to one (12 + 24 > 20) and alone it exceeds the capacity: one stays.
      readHard(two);
      await new Promise((r) => setTimeout(r, 2000));
      assert.equal(stackAt(two).length, 1, "two (24 MiB) never cached in 20 MiB");
      assert.equal(d.find((l) => l.msg === "copy started" && l.dataset === "two"), undefined, "two never copied");
      const used = readdirSync(root.cache).reduce((s, f) => s + statSync(path.join(root.cache, f)).size, 0);
      assert.ok(used <= 20 * MB, `cache holds ${used} bytes`);
    } finally {
      closeSync(fd);
    }
  });
});

test("dropping: a cached dataset that stops being read loses its cache mount and file to a hotter one; its open files stay readable and hold their space until closed", async () => {
  await withRoot("drop", async (root, track) => {
    makeImage(root, path.join(root.data, "old.sqfs"), { "data.bin": 10 * MB });
    makeImage(root, path.join(root.data, "hot.sqfs"), { "data.bin": 10 * MB, "x.bin": 4 * MB });
    const oldT = path.join(root.mnt, "old");
    const hotT = path.join(root.mnt, "hot");
    const d = track(Daemon.start(root, { capacity: "16MB", period: 3 }));
    await waitUntil("mounted", () => stackAt(oldT).length >= 1 && stackAt(hotT).length >= 1);
    const oldReader = startReader(oldT);
    await waitUntil("old cached", () => stackAt(oldT).length === 2);
    await oldReader.stop();
    // A job keeps a file of the cached copy open through the drop.
    const fd = openSync(path.join(oldT, "data.bin"), "r");
    let closed = false;
    try {
      startReader(hotT);
      await waitUntil("old dropped", () => stackAt(oldT).length === 1, 20_000);
      await waitUntil("old's copy deleted", () => !existsSync(path.join(root.cache, "old.sqfs")));
      await d.waitForLog("old unmounted: dropped from cache", (l) => l.msg === "unmounted" && l.dataset === "old" && l.reason === "dropped from cache", 5000);
      // The reader of the dropped copy is not broken.
      const buf = Buffer.alloc(4096);
      assert.equal(readSync(fd, buf, 0, 4096, 5 * MB), 4096);
      // Its 10 MiB stay allocated while the file is open: hot (14 MiB) does not fit beside them.
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(stackAt(hotT).length, 1, "hot not cached while the dropped copy is held");
      assert.equal(d.find((l) => l.msg === "copy started" && l.dataset === "hot"), undefined, "no copy started into held space");
      closeSync(fd);
      closed = true;
      await waitUntil("hot cached once the space is released", () => stackAt(hotT).length === 2, 20_000);
    } finally {
      if (!closed) closeSync(fd);
    }
  });
});

test("a stale cached copy (size or mtime differs from the image) is unmounted, removed and copied again", async () => {
  await withRoot("stale", async (root, track) => {
    makeImage(root, path.join(root.data, "ds.sqfs"), { "data.bin": 4 * MB });
    const target = path.join(root.mnt, "ds");
    const d = track(Daemon.start(root, { capacity: "64MB" }));
    await waitUntil("mounted", () => stackAt(target).length === 1);
    startReader(target);
    await waitUntil("cached", () => stackAt(target).length === 2);
    const copy = path.join(root.cache, "ds.sqfs");
    const old = new Date(Date.now() - 7200_000);
    utimesSync(copy, old, old);
    await d.waitForLog("stale copy deleted", (l) => l.msg === "deleted cache file" && l.reason === "stale cached copy");
    await waitUntil("copied again", () => d.logs.filter((l) => l.msg === "copy finished").length >= 2);
    await waitUntil("mounted again", () => stackAt(target).length === 2 && statSync(copy).mtimeMs === statSync(path.join(root.data, "ds.sqfs")).mtimeMs);
    await d.waitForLog("unmounted: stale cached copy", (l) => l.msg === "unmounted" && l.reason === "stale cached copy", 5000);
  });
});

test("clean-up removes orphan cache files and our leftover loop mounts, and touches nothing else", async () => {
  await withRoot("cleanup", async (root, track) => {
    makeImage(root, path.join(root.data, "keep.sqfs"), { "a.txt": "keep" });
    writeFileSync(path.join(root.cache, "orphan.sqfs"), "no image for me");
    mkdirSync(path.join(root.cache, "somedir"));
    // Leftover: our image mounted at a name that is not its dataset's.
    mkdirSync(path.join(root.mnt, "stray"));
    execFileSync("mount", ["-o", "ro,loop", path.join(root.data, "keep.sqfs"), path.join(root.mnt, "stray")]);
    // Someone else's mounts under mountdir: never touched.
    mkdirSync(path.join(root.mnt, "usb"));
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "usbstick", path.join(root.mnt, "usb")]);
    const usbId = (stackAt(path.join(root.mnt, "usb"))[0] as MountRow).id;
    const d = track(Daemon.start(root, { capacity: "64MB" }));
    await waitUntil("orphan removed", () => !existsSync(path.join(root.cache, "orphan.sqfs")));
    await waitUntil("stray unmounted", () => stackAt(path.join(root.mnt, "stray")).length === 0);
    await waitUntil("keep mounted", () => stackAt(path.join(root.mnt, "keep")).length >= 1);
    await new Promise((r) => setTimeout(r, 1000));
    assert.deepEqual(stackAt(path.join(root.mnt, "usb")).map((m) => m.id), [usbId], "foreign tmpfs untouched");
    assert.ok(existsSync(path.join(root.cache, "somedir")), "directories in cachedir are not ours to delete");
    await d.waitForLog("orphan deleted", (l) => l.msg === "deleted cache file" && l.reason === "belongs to no image", 5000);
  });
});

test("the loop keeps ticking while a copy runs; SIGTERM cancels it, removes the temporary file, leaves mounts and exits 0", async () => {
  await withRoot("sigterm", async (root, track) => {
    makeImage(root, path.join(root.data, "big.sqfs"), { "data.bin": 24 * MB });
    const d = track(Daemon.start(root, { capacity: "64MB" }, { copyKBps: 2048 }));
    await waitUntil("big mounted", () => stackAt(path.join(root.mnt, "big")).length === 1);
    const reader = startReader(path.join(root.mnt, "big"));
    await d.waitForLog("copy started", (l) => l.msg === "copy started");
    const started = d.logs.length;
    // Another image arrives during the copy: it is mounted without waiting for the copy.
    makeImage(root, path.join(root.data, "small.sqfs"), { "a.txt": "small" });
    await waitUntil("small mounted during the copy", () => stackAt(path.join(root.mnt, "small")).length >= 1);
    await waitUntil("ticks during the copy", () => d.logs.slice(started).filter((l) => l.msg === "tick").length >= 3);
    assert.ok(!d.find((l) => l.msg === "copy finished" && l.dataset === "big"), "copy still running");
    await waitUntil("temp file exists", () => readdirSync(root.cache).some((f) => f.endsWith(".partial")));
    await reader.stop();
    const before = mountsUnder(root.mnt).map((m) => m.id).sort();
    d.signal("SIGTERM");
    const { code } = await d.exit();
    assert.equal(code, 0);
    assert.deepEqual(readdirSync(root.cache).filter((f) => f.includes("big")), [], "no partial or final copy left");
    assert.deepEqual(mountsUnder(root.mnt).map((m) => m.id).sort(), before, "mounts left in place");
    await d.waitForLog("copy cancelled", (l) => l.msg === "copy cancelled", 5000);
    await d.waitForLog("bytes served logged", (l) => l.msg === "bytes served from cache", 5000);
  });
});

test("a restarted daemon adopts existing slow and cache mounts without re-mounting them", async () => {
  await withRoot("adopt", async (root, track) => {
    makeImage(root, path.join(root.data, "ds.sqfs"), { "data.bin": 2 * MB });
    const target = path.join(root.mnt, "ds");
    const first = track(Daemon.start(root, { capacity: "64MB" }));
    await waitUntil("mounted", () => stackAt(target).length === 1);
    const reader = startReader(target);
    await waitUntil("cached", () => stackAt(target).length === 2);
    await reader.stop();
    const ids = stackAt(target).map((m) => m.id);
    assert.equal((await first.stop()).code, 0);
    const second = track(Daemon.start(root, { capacity: "64MB" }));
    await waitUntil("a few ticks", () => second.logs.filter((l) => l.msg === "tick").length >= 5);
    assert.deepEqual(stackAt(target).map((m) => m.id), ids);
    assert.equal(second.find((l) => l.msg === "mounted image" || l.msg === "mounted cached copy" || l.msg === "unmounted"), undefined);
  });
});

test("renaming a non-image in is refused with one log line; other datasets unaffected", async () => {
  await withRoot("refuse", async (root, track) => {
    makeImage(root, path.join(root.data, "good.sqfs"), { "a.txt": "good" });
    writeFileSync(path.join(root.data, "notes.sqfs"), "just text");
    const d = track(Daemon.start(root));
    await waitUntil("good mounted", () => stackAt(path.join(root.mnt, "good")).length >= 1);
    await waitUntil("some ticks", () => d.logs.filter((l) => l.msg === "tick").length >= 5);
    const refused = d.logs.filter((l) => l.msg === "image refused");
    assert.equal(refused.length, 1, "logged once, not every tick");
    assert.equal(refused[0]?.file, "notes.sqfs");
    assert.match(String(refused[0]?.reason), /not a squashfs or EROFS image/);
    assert.equal(stackAt(path.join(root.mnt, "notes")).length, 0);
    renameSync(path.join(root.data, "notes.sqfs"), path.join(root.work, "notes.sqfs"));
  });
});

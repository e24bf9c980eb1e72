/**
 * Issue 19: taking over a node the original runs. The node is left exactly
 * as the original leaves it (its plain `mount FILE DIR`, which attaches the
 * loop device itself with no nosuid,nodev; its mount names; its cached copy,
 * made with `rsync -a`, mounted over the slow mount), with a job holding
 * files open on both tiers; then ours starts on it.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { closeSync, copyFileSync, chmodSync, mkdirSync, openSync, readSync, readdirSync, rmSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { CLI, Daemon, makeImage, stackAt, startReader, waitUntil, withRoot, type TestRoot } from "./harness.js";

const MB = 1024 * 1024;

/** What the original does to mount an image or a cached copy: `mount FILE DIR`, no options. */
function originalMount(file: string, dir: string): void {
  mkdirSync(dir, { recursive: true });
  execFileSync("mount", [file, dir], { stdio: "pipe" });
}

/** Reads `length` bytes at 0 from an open descriptor. */
function readFd(fd: number, length: number): string {
  const buf = Buffer.alloc(length);
  return buf.subarray(0, readSync(fd, buf, 0, length, 0)).toString();
}

/** Runs the image's setuid-root copy of `id -u` as nobody: "0" while setuid works on the mount. */
function euidAsNobody(root: TestRoot, dataset: string): string {
  const r = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", path.join(root.mnt, dataset, "id"), "-u"], { encoding: "utf8" });
  return r.stdout.trim();
}

const withSetuidId = (src: string) => {
  copyFileSync("/usr/bin/id", path.join(src, "id"));
  chmodSync(path.join(src, "id"), 0o4755);
};

test("a node the original runs, with a job reading: adopted as is (same mount IDs, no copy, open files read), and every reachable mount made nosuid,nodev in place", async () => {
  await withRoot("upgrade", async (root, track) => {
    makeImage(root, path.join(root.data, "coco.sqfs"), { "a.txt": "coco, opened on the cache", "big.bin": 2 * MB }, { prepare: withSetuidId });
    makeImage(root, path.join(root.data, "imagenet.2017.sqfs"), { "b.txt": "imagenet, opened on the slow tier" }, { prepare: withSetuidId });
    // The original's node: both images mounted, coco cached (rsync -a keeps the mtime) and mounted over.
    originalMount(path.join(root.data, "coco.sqfs"), path.join(root.mnt, "coco"));
    originalMount(path.join(root.data, "imagenet.2017.sqfs"), path.join(root.mnt, "imagenet"));
    execFileSync("rsync", ["-a", path.join(root.data, "coco.sqfs"), `${root.cache}/`]);
    originalMount(path.join(root.cache, "coco.sqfs"), path.join(root.mnt, "coco"));
    const before = { coco: stackAt(path.join(root.mnt, "coco")), imagenet: stackAt(path.join(root.mnt, "imagenet")) };
    assert.equal(before.coco.length, 2);
    assert.ok(!before.coco[1]?.options.split(",").includes("nosuid"), `the original's mounts have no nosuid: ${before.coco[1]?.options}`);
    assert.equal(euidAsNobody(root, "imagenet"), "0", "on the original's mount a user runs a setuid-root program of the image as root");
    const job = { coco: openSync(path.join(root.mnt, "coco", "a.txt"), "r"), imagenet: openSync(path.join(root.mnt, "imagenet", "b.txt"), "r") };
    try {
      const d = track(Daemon.start(root, { capacity: "64MB" }));
      await waitUntil("both tops hardened", () => ["coco", "imagenet"].every((n) => stackAt(path.join(root.mnt, n)).at(-1)?.options.split(",").includes("nodev")), 20_000);
      await waitUntil("a few ticks after", () => d.logs.filter((l) => l.msg === "tick").length >= 4);
      const after = { coco: stackAt(path.join(root.mnt, "coco")), imagenet: stackAt(path.join(root.mnt, "imagenet")) };
      assert.deepEqual(after.coco.map((m) => m.id), before.coco.map((m) => m.id), "coco's mounts kept");
      assert.deepEqual(after.imagenet.map((m) => m.id), before.imagenet.map((m) => m.id), "imagenet's mount kept");
      for (const top of [after.coco.at(-1), after.imagenet.at(-1)]) {
        const flags = top?.options.split(",") ?? [];
        for (const f of ["ro", "nosuid", "nodev"]) assert.ok(flags.includes(f), `${top?.target}: ${top?.options}`);
      }
      assert.equal(euidAsNobody(root, "imagenet"), "65534", "setuid no longer works");
      assert.equal(euidAsNobody(root, "coco"), "65534");
      assert.equal(readFd(job.coco, 64), "coco, opened on the cache", "a file open on the cached copy reads on");
      assert.equal(readFd(job.imagenet, 64), "imagenet, opened on the slow tier");
      assert.equal(d.find((l) => ["copy started", "mounted image", "mounted cached copy", "unmounted"].includes(l.msg)), undefined, "nothing mounted, unmounted or copied again");
      assert.equal(d.logs.filter((l) => l.msg === "hardened an adopted mount: nosuid,nodev set in place").length, 2);
      assert.deepEqual(readdirSync(root.cache), ["coco.sqfs"]);

      // A later deletion is honoured: imagenet's mount goes (lazily: the open file still reads).
      rmSync(path.join(root.data, "imagenet.2017.sqfs"));
      await waitUntil("imagenet unmounted", () => stackAt(path.join(root.mnt, "imagenet")).length === 0);
      assert.equal(readFd(job.imagenet, 64), "imagenet, opened on the slow tier");

      // Handing back: what ours leaves is what the original's loop expects. It lists datadir and cachedir
      // (os.listdir) and takes every entry for an image or a copy, and finds mounts by mountdir/<name up to the first dot>.
      assert.equal((await d.stop()).code, 0);
      assert.deepEqual(readdirSync(root.data), ["coco.sqfs"], "nothing of ours in datadir (peer fill off)");
      assert.deepEqual(readdirSync(root.cache), ["coco.sqfs"], "only copies, named as their image");
      for (const n of readdirSync(root.mnt)) assert.ok(n === "coco" || readdirSync(path.join(root.mnt, n)).length === 0, `mountdir/${n}: a dataset's mount point, or left empty`);
      assert.deepEqual(stackAt(path.join(root.mnt, "coco")).map((m) => m.id), before.coco.map((m) => m.id), "the mounts the original will find, as it left them");
    } finally {
      closeSync(job.coco);
      closeSync(job.imagenet);
    }
  });
});

const CONF = (root: TestRoot) => path.join(root.root, "scratch_manager.conf");
/**
 * The CLI with the test's configuration file, run without blocking this
 * process: the daemon logs into a pipe this process reads, and a command
 * that waits for the daemon must not stop that reading (spawnSync would).
 */
function cliIn(root: TestRoot, args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args, "-c", CONF(root)], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    const timer = setTimeout(() => child.kill("SIGKILL"), 180_000);
    child.on("close", (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

test("evict: a cached dataset's copy is dropped now (open files read on) and stays out until read again; a pinned one needs --force, which unpins it", async () => {
  await withRoot("evict", async (root, track) => {
    makeImage(root, path.join(root.data, "coco.sqfs"), { "a.txt": "coco", "data.bin": 2 * MB });
    makeImage(root, path.join(root.data, "pinned.sqfs"), { "data.bin": 2 * MB });
    const d = track(Daemon.start(root, { capacity: "64MB" }));
    const coco = path.join(root.mnt, "coco");
    const reader = startReader(coco);
    await waitUntil("coco cached", () => stackAt(coco).length === 2, 30_000);
    await reader.stop();
    assert.equal((await cliIn(root, ["pin", "pinned"])).status, 0);
    await waitUntil("pinned cached", () => stackAt(path.join(root.mnt, "pinned")).length === 2, 30_000);
    const fd = openSync(path.join(coco, "a.txt"), "r");
    try {
      const r = await cliIn(root, ["evict", "coco", "pinned", "nosuch"]);
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stdout, /^coco: evicting \(cached\)/m);
      assert.match(r.stdout, /^pinned: pinned; --force removes its pins and evicts it$/m);
      assert.match(r.stdout, /^no dataset "nosuch"/m);
      assert.match(r.stdout, /^evicted coco$/m);
      assert.equal(stackAt(coco).length, 1, "coco's cache mount is gone");
      assert.deepEqual(readdirSync(root.cache), ["pinned.sqfs"], "coco's copy deleted, the pinned one kept");
      // Not read again: it stays out (the knapsack has room for it, and would keep a cached one for its bonus).
      const ticks = d.logs.filter((l) => l.msg === "tick").length;
      await waitUntil("ten more ticks", () => d.logs.filter((l) => l.msg === "tick").length >= ticks + 10);
      assert.equal(stackAt(coco).length, 1);
      // (A read, this one too, makes it worth caching again.)
      assert.equal(readFd(fd, 16), "coco", "a file open on the dropped copy reads on");
      const forced = await cliIn(root, ["evict", "pinned", "--force"]);
      assert.equal(forced.status, 0, forced.stderr + forced.stdout);
      assert.match(forced.stdout, /^evicted pinned$/m);
      assert.equal((await cliIn(root, ["pin"])).stdout, "", "its pin is gone");
      assert.ok(!readdirSync(root.cache).includes("pinned.sqfs"), "its copy is deleted");
    } finally {
      closeSync(fd);
    }
  });
});

test("release drops the cache and stops the daemon; release --all also unmounts every dataset; with no daemon both refuse", async () => {
  await withRoot("release", async (root, track) => {
    makeImage(root, path.join(root.data, "coco.sqfs"), { "data.bin": 2 * MB });
    makeImage(root, path.join(root.data, "places.sqfs"), { "data.bin": 1 * MB });
    const first = track(Daemon.start(root, { capacity: "64MB", pin: "coco" }));
    await waitUntil("coco cached", () => stackAt(path.join(root.mnt, "coco")).length === 2, 30_000);
    await waitUntil("places mounted", () => stackAt(path.join(root.mnt, "places")).length === 1);
    const r = await cliIn(root, ["release"]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^released; the daemon has stopped; 2 loop mount\(s\) left under /m);
    assert.equal((await first.exit()).code, 0);
    assert.deepEqual([stackAt(path.join(root.mnt, "coco")).length, stackAt(path.join(root.mnt, "places")).length], [1, 1], "the slow mounts stay");
    assert.deepEqual(readdirSync(root.cache), [], "the cache is empty");
    // Not running: refused, naming what to do instead.
    const refused = await cliIn(root, ["release"]);
    assert.equal(refused.status, 1);
    assert.match(refused.stderr, /^scratch_manager: release: the daemon is not running .*; start it first/);
    assert.match((await cliIn(root, ["evict", "coco"])).stderr, /^scratch_manager: evict: the daemon is not running/);

    const second = track(Daemon.start(root, { capacity: "64MB", pin: "coco" }));
    await waitUntil("coco cached again", () => stackAt(path.join(root.mnt, "coco")).length === 2, 30_000);
    const all = await cliIn(root, ["release", "--all"]);
    assert.equal(all.status, 0, all.stderr);
    assert.match(all.stdout, /0 loop mount\(s\) left under /);
    assert.equal((await second.exit()).code, 0);
    assert.deepEqual(readdirSync(root.cache), []);
  });
});

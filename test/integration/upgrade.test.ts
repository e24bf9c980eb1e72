/**
 * Issue 19: taking over a node the original runs. The node is left exactly
 * as the original leaves it (its plain `mount FILE DIR`, which attaches the
 * loop device itself with no nosuid,nodev; its mount names; its cached copy,
 * made with `rsync -a`, mounted over the slow mount), with a job holding
 * files open on both tiers; then ours starts on it.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { closeSync, copyFileSync, chmodSync, mkdirSync, openSync, readSync, readdirSync, rmSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { Daemon, makeImage, stackAt, waitUntil, withRoot, type TestRoot } from "./harness.js";

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
    } finally {
      closeSync(job.coco);
      closeSync(job.imagenet);
    }
  });
});

/** Issue 3: bad input, faults and restarts lose nothing. Real images, real loop mounts. */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, closeSync, copyFileSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, symlinkSync, truncateSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { backingFileOf, CLI, Daemon, makeImage, makeSmallFs, mountsUnder, stackAt, startReader, waitUntil, withRoot, type MountRow } from "./harness.js";

const MB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ticks = (d: Daemon) => d.logs.filter((l) => l.msg === "tick").length;
async function waitTicks(d: Daemon, n: number): Promise<void> {
  const start = ticks(d);
  await waitUntil(`${n} ticks`, () => ticks(d) >= start + n);
}
const sha = (buf: Buffer) => createHash("sha256").update(buf).digest("hex");

/** Read a whole file through an fd that stays open across whatever the test does. */
function readFd(fd: number, size: number): Buffer {
  const buf = Buffer.alloc(size);
  let off = 0;
  while (off < size) {
    const n = readSync(fd, buf, off, size - off, off);
    if (n === 0) break;
    off += n;
  }
  return buf.subarray(0, off);
}

test("bad files in datadir are refused once each, with the reason; retried when they change; other datasets unaffected", async () => {
  await withRoot("badinput", async (root, track) => {
    makeImage(root, path.join(root.data, "good.sqfs"), { "a.txt": "good" });
    writeFileSync(path.join(root.data, "text.sqfs"), "just some text\n");
    writeFileSync(path.join(root.data, "random.img"), Buffer.alloc(8192, 7));
    writeFileSync(path.join(root.data, "empty.sqfs"), "");
    makeImage(root, path.join(root.work, "whole.sqfs"), { "big.bin": 2 * MB });
    copyFileSync(path.join(root.work, "whole.sqfs"), path.join(root.data, "truncated.sqfs"));
    truncateSync(path.join(root.data, "truncated.sqfs"), MB);
    mkdirSync(path.join(root.data, "adir.sqfs"));
    symlinkSync("/etc/passwd", path.join(root.data, "outside.sqfs"));
    execFileSync("mkfifo", [path.join(root.data, "fifo.sqfs")]);
    const old = new Date(Date.now() - 3600_000);
    for (const f of readdirSync(root.data)) if (f !== "outside.sqfs") execFileSync("touch", ["-h", "-d", old.toISOString(), path.join(root.data, f)]);

    const d = track(Daemon.start(root));
    await waitUntil("good mounted", () => stackAt(path.join(root.mnt, "good")).length === 1);
    await waitTicks(d, 6);
    const refused = d.logs.filter((l) => l.msg === "image refused");
    const reasons = new Map(refused.map((l) => [l.file as string, String(l.reason)]));
    assert.equal(refused.length, reasons.size, `each refused once: ${JSON.stringify(refused.map((l) => l.file))}`);
    assert.match(reasons.get("text.sqfs") ?? "", /not a squashfs or EROFS image/);
    assert.match(reasons.get("random.img") ?? "", /not a squashfs or EROFS image/);
    assert.match(reasons.get("empty.sqfs") ?? "", /empty file/);
    assert.match(reasons.get("truncated.sqfs") ?? "", /truncated squashfs image/);
    assert.match(reasons.get("adir.sqfs") ?? "", /is a directory/);
    assert.match(reasons.get("outside.sqfs") ?? "", /symbolic link/);
    assert.match(reasons.get("fifo.sqfs") ?? "", /not a regular file/);
    for (const name of ["text", "random", "empty", "truncated", "adir", "outside", "fifo"]) {
      assert.equal(stackAt(path.join(root.mnt, name)).length, 0, `${name} not mounted`);
    }
    assert.equal(readFileSync(path.join(root.mnt, "good", "a.txt"), "utf8"), "good");

    // Fixed in place: the truncated image completed, the text file replaced by an image.
    copyFileSync(path.join(root.work, "whole.sqfs"), path.join(root.data, "truncated.sqfs"));
    makeImage(root, path.join(root.data, "text.sqfs"), { "t.txt": "now an image" });
    await waitUntil("both retried and mounted", () => stackAt(path.join(root.mnt, "truncated")).length === 1 && stackAt(path.join(root.mnt, "text")).length === 1);
    assert.equal(readFileSync(path.join(root.mnt, "text", "t.txt"), "utf8"), "now an image");
    assert.equal(statSync(path.join(root.mnt, "truncated", "big.bin")).size, 2 * MB);
  });
});

test("an image still being written is not mounted until its size and mtime are stable for a full tick", async () => {
  await withRoot("writing", async (root, track) => {
    makeImage(root, path.join(root.work, "slow.sqfs"), { "data.bin": 3 * MB });
    const image = readFileSync(path.join(root.work, "slow.sqfs"));
    const d = track(Daemon.start(root));
    await waitTicks(d, 1);
    const dest = path.join(root.data, "slow.sqfs");
    const fd = openSync(dest, "w");
    // Written in place, in 64 KiB pieces every 50 ms: changes at every 300 ms tick.
    for (let off = 0; off < image.length; off += 64 * 1024) {
      writeFileSync(fd, image.subarray(off, off + 64 * 1024));
      await sleep(50);
      assert.equal(stackAt(path.join(root.mnt, "slow")).length, 0, `not mounted at ${off} bytes`);
    }
    closeSync(fd);
    await waitUntil("mounted once complete", () => stackAt(path.join(root.mnt, "slow")).length === 1);
    assert.equal(d.find((l) => l.msg === "image refused"), undefined, "never refused: it was only pending");
    assert.equal(statSync(path.join(root.mnt, "slow", "data.bin")).size, 3 * MB);
  });
});

test("EROFS images work end to end, including the cache overmount", async () => {
  await withRoot("erofs", async (root, track) => {
    makeImage(root, path.join(root.data, "books.erofs"), { "b.txt": "erofs content", "data.bin": 2 * MB }, { kind: "erofs" });
    const target = path.join(root.mnt, "books");
    track(Daemon.start(root, { capacity: "64MB" }));
    await waitUntil("mounted", () => stackAt(target).length === 1);
    assert.equal((stackAt(target)[0] as MountRow).fstype, "erofs");
    startReader(target);
    await waitUntil("cached", () => stackAt(target).length === 2);
    const top = stackAt(target)[1] as MountRow;
    assert.equal(top.fstype, "erofs");
    assert.equal(backingFileOf(top), path.join(root.cache, "books.erofs"));
    assert.equal(readFileSync(path.join(target, "b.txt"), "utf8"), "erofs content");
  });
});

test("150 images at once under a 1024 open-file limit: all mounted, no action fails (EMFILE before the reads and actions were bounded)", async () => {
  await withRoot("many", async (root, track) => {
    const one = makeImage(root, path.join(root.work, "one.sqfs"), { "id.txt": "same" });
    const names = Array.from({ length: 150 }, (_, i) => `m${String(i).padStart(3, "0")}`);
    for (const name of names) copyFileSync(one, path.join(root.data, `${name}.sqfs`));
    const d = track(new Daemon(root, { config: Daemon.standardConfig(root), args: ["--verbose"], nofile: 1024 }));
    await waitUntil("150 mounted", () => d.logs.filter((l) => l.msg === "mounted image").length === names.length, 60_000);
    assert.deepEqual(
      d.logs.filter((l) => l.level === "error").map((l) => `${String(l.msg)}: ${String(l.err)}`),
      [],
    );
    assert.deepEqual(readdirSync(root.mnt).sort(), names);
    for (const name of names.filter((_, i) => i % 30 === 0)) assert.equal(readFileSync(path.join(root.mnt, name, "id.txt"), "utf8"), "same");
  });
});

test("names with spaces, non-ASCII, leading dashes and shell syntax are just names", async () => {
  await withRoot("names", async (root, track) => {
    const names = ["my data", "données 数据", "-o remount", "--help", "$(touch pwned)", "`touch pwned`;x"];
    for (const name of names) makeImage(root, path.join(root.data, `${name}.sqfs`), { "id.txt": name });
    track(Daemon.start(root));
    for (const name of names) {
      await waitUntil(`${name} mounted`, () => stackAt(path.join(root.mnt, name)).length === 1);
      assert.equal(readFileSync(path.join(root.mnt, name, "id.txt"), "utf8"), name);
    }
    for (const dir of [process.cwd(), root.root, root.data, root.cache, "/"]) assert.ok(!existsSync(path.join(dir, "pwned")), `no shell ran (${dir})`);
    assert.deepEqual(readdirSync(root.mnt).sort(), [...names].sort(), "nothing mounted outside mountdir/<name>");
  });
});

test("two images with one mount name: one error naming both, the first served, the other once the first is gone", async () => {
  await withRoot("conflict", async (root, track) => {
    makeImage(root, path.join(root.data, "coco.2017.sqfs"), { "year.txt": "2017" });
    makeImage(root, path.join(root.data, "coco.2014.sqfs"), { "year.txt": "2014" });
    const target = path.join(root.mnt, "coco");
    const d = track(Daemon.start(root));
    await waitUntil("coco mounted", () => stackAt(target).length === 1);
    assert.equal(readFileSync(path.join(target, "year.txt"), "utf8"), "2014", "the lexicographically first wins");
    await waitTicks(d, 5);
    const errors = d.logs.filter((l) => l.msg === "image refused" && l.file === "coco.2017.sqfs");
    assert.equal(errors.length, 1, "reported once");
    assert.match(String(errors[0]?.reason), /"coco" is already taken by "coco\.2014\.sqfs".*naming = strip-extension/);
    // A new image that sorts first does not displace the mounted one.
    makeImage(root, path.join(root.data, "coco.2000.sqfs"), { "year.txt": "2000" });
    await waitTicks(d, 4);
    assert.equal(readFileSync(path.join(target, "year.txt"), "utf8"), "2014", "the mounted image keeps the name");
    rmSync(path.join(root.data, "coco.2014.sqfs"));
    rmSync(path.join(root.data, "coco.2000.sqfs"));
    await waitUntil("2017 served", () => {
      try {
        return readFileSync(path.join(target, "year.txt"), "utf8") === "2017";
      } catch {
        return false;
      }
    });
  });
  await withRoot("strip-ext", async (root, track) => {
    makeImage(root, path.join(root.data, "coco.2017.sqfs"), { "year.txt": "2017" });
    makeImage(root, path.join(root.data, "coco.2014.sqfs"), { "year.txt": "2014" });
    track(Daemon.start(root, { naming: "strip-extension" }));
    await waitUntil("both mounted", () => stackAt(path.join(root.mnt, "coco.2017")).length === 1 && stackAt(path.join(root.mnt, "coco.2014")).length === 1);
  });
});

test("a bad config (missing cachedir, overlapping directories, a relative path) exits 2 before touching any mount", async () => {
  await withRoot("badconf2", async (root) => {
    makeImage(root, path.join(root.data, "alpha.sqfs"), { "a.txt": "alpha" });
    const cases: [Record<string, string>, RegExp][] = [
      [{ cachedir: path.join(root.root, "nope") }, /^scratch_manager: config: \S+\/bad\.conf:2: cachedir = ".*nope" is not usable \(ENOENT\); expected an absolute path to an existing directory$/],
      [{ cachedir: path.join(root.data, "cache") }, /cachedir = .* overlaps datadir/],
      [{ mountdir: "relative/dir" }, /mountdir = "relative\/dir" is not valid; expected an absolute path/],
    ];
    mkdirSync(path.join(root.data, "cache"));
    for (const [extra, expected] of cases) {
      const conf = path.join(root.root, "bad.conf");
      writeFileSync(conf, Daemon.standardConfig(root, extra));
      const r = spawnSync(process.execPath, [CLI, "--config", conf], { encoding: "utf8", timeout: 10_000 });
      assert.equal(r.status, 2, JSON.stringify(extra));
      assert.match(r.stderr.trim(), expected);
      assert.deepEqual(mountsUnder(root.root), []);
    }
  });
});

test("kill -9 in the middle of a copy, then a restart: partial file removed, every mount adopted as is, open files read correct bytes", async () => {
  await withRoot("kill9", async (root, track) => {
    makeImage(root, path.join(root.data, "done.sqfs"), { "data.bin": 2 * MB });
    makeImage(root, path.join(root.data, "big.sqfs"), { "data.bin": 16 * MB });
    const doneT = path.join(root.mnt, "done");
    const bigT = path.join(root.mnt, "big");
    const first = track(Daemon.start(root, { capacity: "64MB" }, { copyKBps: 2048 }));
    await waitUntil("mounted", () => stackAt(doneT).length === 1 && stackAt(bigT).length === 1);
    const doneReader = startReader(doneT);
    await waitUntil("done cached", () => stackAt(doneT).length === 2);
    await doneReader.stop();
    const bigReader = startReader(bigT);
    await waitUntil("big copying", () => readdirSync(root.cache).some((f) => f.includes("big") && f.endsWith(".partial")));
    // Jobs hold files open on the cache tier (done) and the slow tier (big).
    const doneFd = openSync(path.join(doneT, "data.bin"), "r");
    const bigFd = openSync(path.join(bigT, "data.bin"), "r");
    try {
      const doneSum = sha(readFd(doneFd, 2 * MB));
      const bigSum = sha(readFd(bigFd, 16 * MB));
      const ids = mountsUnder(root.mnt).map((m) => m.id);
      first.signal("SIGKILL");
      await first.exit();
      await bigReader.stop();
      assert.ok(readdirSync(root.cache).some((f) => f.endsWith(".partial")), "the killed copy left its partial file");

      const second = track(Daemon.start(root, { capacity: "64MB" }));
      await waitUntil("partial removed", () => !readdirSync(root.cache).some((f) => f.endsWith(".partial")));
      await waitTicks(second, 5);
      assert.deepEqual(mountsUnder(root.mnt).map((m) => m.id), ids, "no mount undone or redone");
      assert.equal(second.find((l) => l.msg === "mounted image" || l.msg === "mounted cached copy" || l.msg === "unmounted"), undefined);
      assert.deepEqual(readdirSync(root.cache), ["done.sqfs"]);
      assert.equal(sha(readFd(doneFd, 2 * MB)), doneSum, "cache-tier reader reads the same bytes");
      assert.equal(sha(readFd(bigFd, 16 * MB)), bigSum, "slow-tier reader reads the same bytes");
      assert.equal(sha(readFileSync(path.join(bigT, "data.bin"))), bigSum);
    } finally {
      closeSync(doneFd);
      closeSync(bigFd);
    }
  });
});

test("an image replaced (atomic rename) or deleted while its copy runs: copy cancelled, temp file removed, new version served", async () => {
  await withRoot("replace", async (root, track) => {
    makeImage(root, path.join(root.data, "ds.sqfs"), { "v.txt": "version 1", "data.bin": 8 * MB });
    makeImage(root, path.join(root.data, "gone.sqfs"), { "data.bin": 8 * MB });
    const target = path.join(root.mnt, "ds");
    const gone = path.join(root.mnt, "gone");
    const d = track(Daemon.start(root, { capacity: "64MB" }, { copyKBps: 1024 }));
    await waitUntil("mounted", () => stackAt(target).length === 1 && stackAt(gone).length === 1);
    startReader(target);
    startReader(gone);
    await waitUntil("both copying", () => readdirSync(root.cache).filter((f) => f.endsWith(".partial")).length === 2);
    makeImage(root, path.join(root.data, "ds.sqfs"), { "v.txt": "version 2", "data.bin": 4 * MB });
    rmSync(path.join(root.data, "gone.sqfs"));
    await waitUntil("both cancelled", () => d.logs.filter((l) => l.msg === "copy cancelled").length === 2);
    await waitUntil("gone unmounted", () => stackAt(gone).length === 0);
    await waitUntil("version 2 served", () => {
      try {
        return readFileSync(path.join(target, "v.txt"), "utf8") === "version 2";
      } catch {
        return false;
      }
    });
    assert.ok(!readdirSync(root.cache).some((f) => f.includes("gone")), "no partial of the deleted image");
    await waitUntil("version 2 cached", () => stackAt(target).length === 2 && statSync(path.join(root.cache, "ds.sqfs")).size === statSync(path.join(root.data, "ds.sqfs")).size, 30_000);
    assert.equal(readFileSync(path.join(target, "v.txt"), "utf8"), "version 2");
    assert.deepEqual(readdirSync(root.cache), ["ds.sqfs"]);
  });
});

test("the cache file system filling up during a copy: the copy fails cleanly, the dataset stays slow, no partial file, back-off instead of a hot loop", async () => {
  await withRoot("enospc", async (root, track) => {
    const cachefs = makeSmallFs(root, "cachefs", 24);
    const cachedir = path.join(cachefs, "cache");
    mkdirSync(cachedir);
    makeImage(root, path.join(root.data, "ds.sqfs"), { "data.bin": 12 * MB });
    const target = path.join(root.mnt, "ds");
    // A long interval, so that rsync meets the full disk before the next tick sees it (a tick that
    // sees it first cancels the copy instead, since the cache yields to other programs' files).
    const d = track(Daemon.start(root, { capacity: "200MB", cachedir, interval: 2 }, { copyKBps: 2048 }));
    await waitUntil("mounted", () => stackAt(target).length === 1);
    startReader(target);
    await waitUntil("copying", () => readdirSync(cachedir).some((f) => f.endsWith(".partial")));
    // Another program fills the file system (outside cachedir, so not the daemon's to delete).
    spawnSync("dd", ["if=/dev/zero", `of=${path.join(cachefs, "filler")}`, "bs=1M", "status=none"]);
    const failed = await d.waitForLog("copy failed", (l) => l.msg === "copy failed");
    assert.match(String(failed.err), /No space left on device|ENOSPC|error in file IO/i);
    await d.waitForLog("back-off", (l) => l.msg === "dataset in back-off" && l.dataset === "ds");
    assert.ok(!readdirSync(cachedir).some((f) => f.endsWith(".partial")), "no partial file");
    assert.equal(stackAt(target).length, 1, "still on the slow tier");
    const startedBefore = d.logs.filter((l) => l.msg === "copy started").length;
    await sleep(2000);
    assert.ok(d.logs.filter((l) => l.msg === "copy started").length - startedBefore <= 1, "no hot loop of retries");
    // Space back: the copy is retried after its back-off and succeeds.
    rmSync(path.join(cachefs, "filler"));
    await waitUntil("cached after back-off", () => stackAt(target).length === 2, 30_000);
  });
});

test("a mount that fails is logged with its stderr and retried with back-off; a hung one is cut by command_timeout", async () => {
  await withRoot("cmdfail", async (root, track) => {
    makeImage(root, path.join(root.data, "flaky.sqfs"), { "a.txt": "flaky" });
    makeImage(root, path.join(root.data, "hang.sqfs"), { "a.txt": "hang" });
    makeImage(root, path.join(root.data, "fine.sqfs"), { "a.txt": "fine" });
    const counter = path.join(root.root, "flaky-count");
    const hangFlag = path.join(root.root, "hang-on");
    writeFileSync(hangFlag, "");
    const mountWrapper = [
      `case "$*" in`,
      `  */mnt/flaky) n=$(cat ${counter} 2>/dev/null || echo 0); echo $((n + 1)) > ${counter}`,
      `    if [ "$n" -lt 2 ]; then echo "mount: simulated failure $n" >&2; exit 32; fi ;;`,
      `  */mnt/hang) if [ -e ${hangFlag} ]; then exec sleep 600; fi ;;`,
      `esac`,
      `exec /usr/bin/mount "$@"`,
    ].join("\n");
    const d = track(Daemon.start(root, { command_timeout: 1 }, { bin: { mount: mountWrapper } }));
    await waitUntil("fine mounted", () => stackAt(path.join(root.mnt, "fine")).length === 1, 5000);
    const failure = await d.waitForLog("flaky failed", (l) => l.msg === "action failed" && l.dataset === "flaky");
    assert.match(String(failure.err), /mount -t squashfs -o ro,nosuid,nodev -- \/dev\/loop\d+ .*\/mnt\/flaky exited with status 32: mount: simulated failure 0/);
    await d.waitForLog("back-off", (l) => l.msg === "dataset in back-off" && l.dataset === "flaky");
    await waitUntil("flaky mounted after retries", () => stackAt(path.join(root.mnt, "flaky")).length === 1, 20_000);
    assert.equal(readFileSync(counter, "utf8").trim(), "3", "two failures, then success: retried, not blacklisted");

    const hung = await d.waitForLog("hang cut", (l) => l.msg === "action failed" && l.dataset === "hang");
    assert.match(String(hung.err), /timed out after \d+ ms/);
    rmSync(hangFlag);
    await waitUntil("hang mounted once the mount stops hanging", () => stackAt(path.join(root.mnt, "hang")).length === 1, 20_000);
    assert.equal(spawnSync("pgrep", ["-f", "sleep 600"]).status, 1, "the hung command was killed");
  });
});

test("a mount someone else made at a dataset's name or elsewhere under mountdir is never touched", async () => {
  await withRoot("foreign", async (root, track) => {
    makeImage(root, path.join(root.data, "alpha.sqfs"), { "a.txt": "alpha" });
    makeImage(root, path.join(root.data, "beta.sqfs"), { "b.txt": "beta" });
    mkdirSync(path.join(root.mnt, "alpha"));
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "theirs", path.join(root.mnt, "alpha")]);
    mkdirSync(path.join(root.mnt, "scratch"));
    execFileSync("mount", ["--bind", root.work, path.join(root.mnt, "scratch")]);
    const before = mountsUnder(root.mnt).map((m) => [m.id, m.target]);
    const d = track(Daemon.start(root));
    await waitUntil("beta mounted", () => stackAt(path.join(root.mnt, "beta")).length === 1);
    await waitTicks(d, 5);
    const after = mountsUnder(root.mnt).filter((m) => !m.target.endsWith("/beta")).map((m) => [m.id, m.target]);
    assert.deepEqual(after, before, "foreign mounts untouched, nothing mounted over them");
    const problems = d.logs.filter((l) => l.msg.includes("not ours"));
    assert.equal(problems.length, 1, "reported once");
    assert.equal(problems[0]?.dataset, "alpha");
  });
});

test("mounts are nosuid and nodev: a setuid-root binary does not run as root, a device node does not open", async () => {
  await withRoot("security", async (root, track) => {
    makeImage(
      root,
      path.join(root.data, "evil.sqfs"),
      {},
      {
        prepare: (src) => {
          copyFileSync("/usr/bin/id", path.join(src, "id"));
          chmodSync(path.join(src, "id"), 0o4755);
        },
        mksquashfsArgs: ["-all-root", "-p", "null c 666 root root 1 3"],
      },
    );
    const target = path.join(root.mnt, "evil");
    track(Daemon.start(root));
    await waitUntil("mounted", () => stackAt(target).length === 1);
    const id = path.join(target, "id");
    assert.equal(statSync(id).mode & 0o4000, 0o4000, "the image does carry a setuid bit");
    assert.equal(statSync(id).uid, 0);
    const r = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", id, "-u"], { encoding: "utf8" });
    assert.equal(r.stdout.trim(), "65534", `ran as nobody, not root: ${r.stderr}`);
    assert.ok(statSync(path.join(target, "null")).isCharacterDevice());
    assert.throws(() => openSync(path.join(target, "null"), "r"), /EACCES/);
    assert.equal(statSync(target).mode & 0o022, 0, "mount point not writable by others");
  });
});

test("a copy that stops moving data (a dead NFS server) is cut after command_timeout and retried with back-off", async () => {
  await withRoot("stall", async (root, track) => {
    makeImage(root, path.join(root.data, "ds.sqfs"), { "data.bin": 2 * MB });
    const flag = path.join(root.root, "hang");
    writeFileSync(flag, "");
    // cp that writes a little, then hangs while the flag exists; the real cp once it is gone.
    const cp = `if [ -e ${flag} ]; then for a; do dst=$a; done; head -c 4096 /dev/zero > "$dst"; exec sleep 600; fi\nexec /bin/cp "$@"`;
    const d = track(Daemon.start(root, { capacity: "64MB", command_timeout: 2 }, { bin: { cp } }));
    await waitUntil("mounted", () => stackAt(path.join(root.mnt, "ds")).length === 1);
    startReader(path.join(root.mnt, "ds"));
    const failed = await d.waitForLog("stalled copy cut", (l) => l.msg === "copy failed" && l.dataset === "ds");
    assert.match(String(failed.err), /no data moved for 2 s/);
    assert.ok((failed.ms as number) >= 2000 && (failed.ms as number) < 10_000, `cut after ${String(failed.ms)} ms`);
    await d.waitForLog("back-off", (l) => l.msg === "dataset in back-off" && l.dataset === "ds");
    assert.ok(!readdirSync(root.cache).some((f) => f.endsWith(".partial")), "no partial file");
    assert.equal(spawnSync("pgrep", ["-f", "sleep 600"]).status, 1, "the hung copy was killed");
    rmSync(flag);
    await waitUntil("copied once the server is back", () => stackAt(path.join(root.mnt, "ds")).length === 2, 30_000);
  });
});

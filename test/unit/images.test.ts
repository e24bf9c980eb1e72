import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { copyFile, mkdir, open, stat, symlink, truncate, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { run } from "../../src/lib/exec.js";
import { PROBE_BYTES, probeHeader, type Probe } from "../../src/observe/images.js";
import { listDirectory, readHeaders, ScanError } from "../../src/observe/scan.js";
import { prng, tempDir } from "./helpers.js";

/** A squashfs superblock: magic "hsqs" (LE) at 0, s_major at 28, bytes_used at 40. */
function squashfsHeader(o: { major?: number; bytesUsed?: number; length?: number } = {}): Buffer {
  const buf = Buffer.alloc(o.length ?? 96);
  buf.writeUInt32LE(0x73717368, 0);
  if (buf.length >= 96) {
    buf.writeUInt16LE(o.major ?? 4, 28);
    buf.writeBigUInt64LE(BigInt(o.bytesUsed ?? 4000), 40);
  }
  return buf;
}

/** An EROFS superblock at 1024: magic, blkszbits at +0x0c, blocks at +0x24. */
function erofsHeader(o: { blkszbits?: number; blocks?: number; at?: number } = {}): Buffer {
  const at = o.at ?? 1024;
  const buf = Buffer.alloc(1024 + 128);
  buf.writeUInt32LE(0xe0f5e1e2, at);
  buf.writeUInt8(o.blkszbits ?? 12, at + 0x0c);
  buf.writeUInt32LE(o.blocks ?? 2, at + 0x24);
  return buf;
}

describe("probeHeader: images are recognised by their superblock, not their name", () => {
  const cases: { title: string; header: Buffer; size: number; kind?: "squashfs" | "erofs"; reason?: RegExp }[] = [
    { title: "squashfs 4, bytes_used within the file: accepted", header: squashfsHeader({ bytesUsed: 4000 }), size: 4096, kind: "squashfs" },
    { title: "squashfs 4, bytes_used exactly the file size: accepted", header: squashfsHeader({ bytesUsed: 4096 }), size: 4096, kind: "squashfs" },
    { title: "squashfs, bytes_used beyond the file: refused as truncated", header: squashfsHeader({ bytesUsed: 8192 }), size: 4096, reason: /truncated squashfs image \(4096 of 8192 bytes\)/ },
    { title: "squashfs 3: refused, naming the version", header: squashfsHeader({ major: 3 }), size: 4096, reason: /version 3/ },
    { title: "a squashfs magic in a file shorter than a superblock: refused", header: squashfsHeader({ length: 40 }), size: 40, reason: /truncated squashfs superblock/ },
    { title: "a zero-length file: refused", header: Buffer.alloc(0), size: 0, reason: /empty/ },
    { title: "a squashfs header with size 0 (file emptied since): refused", header: squashfsHeader(), size: 0, reason: /empty/ },
    { title: "EROFS magic at 1024, 2 blocks of 4 KiB in 8 KiB: accepted", header: erofsHeader({ blkszbits: 12, blocks: 2 }), size: 8192, kind: "erofs" },
    { title: "EROFS, blocks beyond the file: refused as truncated", header: erofsHeader({ blkszbits: 12, blocks: 4 }), size: 8192, reason: /truncated EROFS image \(8192 of 16384 bytes\)/ },
    { title: "EROFS with an impossible block size: refused", header: erofsHeader({ blkszbits: 30, blocks: 0 }), size: 8192, reason: /block size/ },
    { title: "the EROFS magic at offset 0 instead of 1024: refused", header: erofsHeader({ at: 0 }), size: 8192, reason: /no superblock magic/ },
    { title: "the EROFS magic in a header cut before 1024+0x28: refused", header: erofsHeader().subarray(0, 1030), size: 1030, reason: /no superblock magic/ },
    { title: "big-endian 'sqsh' (squashfs 3 on big-endian hosts): refused", header: Buffer.from("sqsh".padEnd(96, "\0"), "latin1"), size: 4096, reason: /no superblock magic/ },
    { title: "a text file: refused", header: Buffer.from("hello, this is not an image\n"), size: 28, reason: /not a squashfs or EROFS image/ },
    { title: "a file with a gzip header: refused", header: Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0]), size: 1000, reason: /no superblock magic/ },
  ];
  for (const c of cases) {
    test(c.title, () => {
      const probe = probeHeader(c.header, c.size);
      if (c.kind) assert.deepEqual(probe, { ok: true, kind: c.kind });
      else {
        assert.equal(probe.ok, false);
        if (!probe.ok) assert.match(probe.reason, c.reason ?? /./);
      }
    });
  }

  test("200 buffers of random bytes are all refused", () => {
    const rand = prng(42);
    for (let i = 0; i < 200; i++) {
      const buf = Buffer.alloc(1152);
      for (let j = 0; j < buf.length; j++) buf[j] = Math.floor(rand() * 256);
      assert.equal(probeHeader(buf, 1 << 20).ok, false);
    }
  });
});

function installed(program: string): boolean {
  const r = spawnSync(program, ["-version"], { stdio: "ignore", timeout: 5000 });
  return !(r.error && "code" in r.error && r.error.code === "ENOENT");
}
const HAVE_MKSQUASHFS = installed("mksquashfs");
const HAVE_MKFS_EROFS = installed("mkfs.erofs");

describe("readHeaders + probeHeader on real images", () => {
  let dir = "";
  let cleanup: () => Promise<void> = async () => {};
  before(async () => {
    ({ dir, cleanup } = await tempDir("sm-images-"));
    const src = path.join(dir, "src");
    await mkdir(src);
    const rand = prng(7);
    await writeFile(path.join(src, "random.bin"), Buffer.from(Array.from({ length: 64 * 1024 }, () => Math.floor(rand() * 256))));
    await writeFile(path.join(src, "hello.txt"), "hello\n");
    if (HAVE_MKSQUASHFS) execFileSync("mksquashfs", [src, path.join(dir, "real.sqfs"), "-quiet", "-no-progress", "-noappend"], { stdio: "ignore", timeout: 20_000 });
    if (HAVE_MKFS_EROFS) execFileSync("mkfs.erofs", ["--quiet", path.join(dir, "real.erofs"), src], { stdio: "ignore", timeout: 20_000 });
  });
  after(() => cleanup());

  /** As the observer probes: the header through head(1), then probeHeader. */
  async function probeFile(file: string): Promise<Probe> {
    const size = (await stat(file)).size;
    const header = (await readHeaders(run, [{ path: file, size }], PROBE_BYTES, 5000)).get(file);
    assert.ok(header instanceof Buffer, `header of ${file} read`);
    return probeHeader(header, size);
  }

  /** A copy cut to half the size, as an interrupted copy into datadir would leave it. */
  async function truncatedCopy(file: string): Promise<string> {
    const cut = `${file}.cut`;
    await copyFile(file, cut);
    await truncate(cut, Math.floor((await stat(file)).size / 2));
    return cut;
  }

  test("a squashfs image built by mksquashfs is accepted", { skip: !HAVE_MKSQUASHFS && "mksquashfs not installed" }, async () => {
    assert.deepEqual(await probeFile(path.join(dir, "real.sqfs")), { ok: true, kind: "squashfs" });
  });
  test("a truncated copy of the squashfs image is refused", { skip: !HAVE_MKSQUASHFS && "mksquashfs not installed" }, async () => {
    const probe = await probeFile(await truncatedCopy(path.join(dir, "real.sqfs")));
    assert.equal(probe.ok, false);
    assert.match(probe.ok ? "" : probe.reason, /truncated squashfs/);
  });
  test("its name does not matter: the same image as .img is accepted", { skip: !HAVE_MKSQUASHFS && "mksquashfs not installed" }, async () => {
    await copyFile(path.join(dir, "real.sqfs"), path.join(dir, "renamed.img"));
    assert.deepEqual(await probeFile(path.join(dir, "renamed.img")), { ok: true, kind: "squashfs" });
  });
  test("an EROFS image built by mkfs.erofs is accepted", { skip: !HAVE_MKFS_EROFS && "mkfs.erofs not installed" }, async () => {
    assert.deepEqual(await probeFile(path.join(dir, "real.erofs")), { ok: true, kind: "erofs" });
  });
  test("a truncated copy of the EROFS image is refused", { skip: !HAVE_MKFS_EROFS && "mkfs.erofs not installed" }, async () => {
    const probe = await probeFile(await truncatedCopy(path.join(dir, "real.erofs")));
    assert.equal(probe.ok, false);
    assert.match(probe.ok ? "" : probe.reason, /truncated EROFS/);
  });

  test("a zero-byte file is refused as empty", async () => {
    await writeFile(path.join(dir, "empty.sqfs"), "");
    assert.deepEqual(await probeFile(path.join(dir, "empty.sqfs")), { ok: false, reason: "empty file" });
  });
  test("a text file named .sqfs is refused", async () => {
    await writeFile(path.join(dir, "notes.sqfs"), "just some notes\n");
    assert.equal((await probeFile(path.join(dir, "notes.sqfs"))).ok, false);
  });
  test("a file that cannot be read gets its errno, and the other files of the batch their headers", async () => {
    const files = [path.join(dir, "real.sqfs"), path.join(dir, "vanished.sqfs"), dir, path.join(dir, "empty.sqfs")];
    const out = await readHeaders(run, files.map((f) => ({ path: f, size: 4096 })), PROBE_BYTES, 5000);
    const vanished = out.get(files[1] as string);
    const isDir = out.get(dir);
    assert.ok(vanished instanceof ScanError && vanished.code === "ENOENT", String(vanished));
    assert.ok(isDir instanceof ScanError && isDir.code === "EISDIR", String(isDir));
    assert.ok(out.get(files[3] as string) instanceof Buffer);
  });
});

describe("listDirectory (find): lstat of every entry, sorted by name", () => {
  let dir = "";
  let cleanup: () => Promise<void> = async () => {};
  before(async () => {
    ({ dir, cleanup } = await tempDir("sm-list-"));
    await writeFile(path.join(dir, "b.sqfs"), "12345");
    await writeFile(path.join(dir, ".hidden"), "");
    await mkdir(path.join(dir, "a-dir"));
    await symlink("b.sqfs", path.join(dir, "link.sqfs"));
    execFileSync("mkfifo", [path.join(dir, "fifo")], { timeout: 5000 });
  });
  after(() => cleanup());

  test("types as lstat sees them (a symlink is not followed), sizes, sorted names", async () => {
    const entries = (await listDirectory(run, dir, 5000)).entries;
    assert.deepEqual(
      entries.map((e) => [e.file, e.type]),
      [
        [".hidden", "file"],
        ["a-dir", "directory"],
        ["b.sqfs", "file"],
        ["fifo", "other"],
        ["link.sqfs", "symlink"],
      ],
    );
    const b = entries.find((e) => e.file === "b.sqfs");
    assert.equal(b?.size, 5);
    assert.equal(b?.path, path.join(dir, "b.sqfs"));
    const st = await stat(path.join(dir, "b.sqfs"));
    assert.equal(b?.ino, st.ino);
    // find prints nanoseconds; the listing keeps microseconds, as stability and sameVersion need.
    assert.ok(Math.abs((b?.mtimeMs ?? 0) - st.mtimeMs) < 0.001, `${b?.mtimeMs} vs ${st.mtimeMs}`);
  });

  test("a file being written shows its current size", async () => {
    const handle = await open(path.join(dir, "growing.sqfs"), "w");
    try {
      await handle.write(Buffer.alloc(100));
      assert.equal(((await listDirectory(run, dir, 5000)).entries).find((e) => e.file === "growing.sqfs")?.size, 100);
    } finally {
      await handle.close();
    }
  });
});

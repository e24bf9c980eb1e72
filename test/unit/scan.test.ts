/** Reading a directory through child processes (observe/scan.ts): parsers, and find/head on real files. */
import assert from "node:assert/strict";
import { mkdir, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { CommandFailedError, run, type Runner } from "../../src/lib/exec.js";
import { majorMinorOf } from "../../src/observe/loops.js";
import { fatalFindError, listDirectory, parseErrorLine, parseFindListing, ScanError, splitHeadOutput, statFile } from "../../src/observe/scan.js";
import { unchanged } from "../../src/observe/snapshot.js";
import { DATA, fileEntry, tempDir } from "./helpers.js";

const record = (...fields: (string | number)[]) => `${fields.join("\t")}\0`;

describe("parseFindListing: find -printf records, NUL-terminated, name last", () => {
  test("the directory itself (depth 0) and its entries, sorted by name, with device as major:minor", () => {
    const text =
      record(0, "d", 2049, 11, 4096, "1700000000.5000000000", "1700000001.2500000000", "") +
      record(1, "f", 2049, 12, 4096, "1700000000.0000001000", "1700000000.0", "b.sqfs") +
      record(1, "l", 2049, 13, 6, "1700000000.0", "1700000000.0", "a link") +
      record(1, "p", 2049, 14, 0, "1700000000.0", "1700000000.0", "fifo");
    const listing = parseFindListing(text, "/srv/data");
    assert.deepEqual(listing.dir, { dev: majorMinorOf(2049n), ino: 11, mtimeMs: 1_700_000_000_500, ctimeMs: 1_700_000_001_250 });
    assert.deepEqual(
      listing.entries.map((e) => [e.file, e.type, e.ino, e.path]),
      [
        ["a link", "symlink", 13, "/srv/data/a link"],
        ["b.sqfs", "file", 12, "/srv/data/b.sqfs"],
        ["fifo", "other", 14, "/srv/data/fifo"],
      ],
    );
    assert.equal(listing.entries[1]?.mtimeMs, 1_700_000_000_000);
  });
  test("a name holding tabs and newlines is kept whole", () => {
    const text = record(0, "d", 1, 2, 0, "1.0", "1.0", "") + record(1, "f", 1, 3, 9, "1.0", "1.0", "odd\tname\nhere");
    assert.equal(parseFindListing(text, "/d").entries[0]?.file, "odd\tname\nhere");
  });
  test("no record for the directory itself is an error naming it", () => {
    assert.throws(() => parseFindListing(record(1, "f", 1, 3, 9, "1.0", "1.0", "x"), "/d"), /find printed nothing for \/d itself/);
  });
});

describe("errors as find and head print them (LC_ALL=C), back to their errno", () => {
  const cases: [string, string, string | undefined][] = [
    ["find: '/data': Input/output error", "EIO", "/data"],
    ["find: '/data': Stale file handle", "ESTALE", "/data"],
    ["find: '/data': Transport endpoint is not connected", "ENOTCONN", "/data"],
    ["find: '/data': Permission denied", "EACCES", "/data"],
    ["find: '/data/x.sqfs': No such file or directory", "ENOENT", "/data/x.sqfs"],
    ["head: cannot open '/data/x' for reading: Permission denied", "EACCES", undefined],
    ["find: '/data': Some new error", "EIO", "/data"],
  ];
  for (const [line, code, file] of cases) {
    test(line, () => {
      const e = parseErrorLine(line);
      assert.equal(e.code, code);
      if (file !== undefined) assert.equal(e.file, file);
    });
  }
  test("an entry that vanished during the scan is not an error; the directory vanishing, or any other error, is", () => {
    assert.equal(fatalFindError("find: '/data/x.sqfs': No such file or directory\n", "/data"), undefined);
    assert.equal(fatalFindError("find: '/data': No such file or directory\n", "/data")?.code, "ENOENT");
    assert.equal(fatalFindError("find: '/data/x.sqfs': No such file or directory\nfind: '/data': Input/output error\n", "/data")?.code, "EIO");
  });
});

describe("splitHeadOutput: head -c N -- f1 f2 ... framed by the known names", () => {
  const frame = (parts: [string, Buffer][]) =>
    Buffer.concat(parts.flatMap(([name, bytes], i) => [Buffer.from(`${i === 0 ? "" : "\n"}==> ${name} <==\n`), bytes]));
  test("each file's bytes, whatever they hold (even something that looks like a frame)", () => {
    const a = Buffer.from("hsqs\n==> /d/b <==\nnot a frame");
    const b = Buffer.alloc(8, 0xff);
    const out = splitHeadOutput(frame([["/d/a", a], ["/d/b", b]]), [{ path: "/d/a", length: a.length }, { path: "/d/b", length: b.length }]);
    assert.deepEqual(out?.get("/d/a"), a);
    assert.deepEqual(out?.get("/d/b"), b);
  });
  test("a file that changed size since it was listed breaks the framing: undefined (read one by one)", () => {
    const out = frame([["/d/a", Buffer.from("abc")], ["/d/b", Buffer.from("cd")]]);
    assert.equal(splitHeadOutput(out, [{ path: "/d/a", length: 2 }, { path: "/d/b", length: 2 }]), undefined);
    assert.equal(splitHeadOutput(Buffer.from("garbage"), [{ path: "/d/a", length: 2 }, { path: "/d/b", length: 2 }]), undefined);
  });
});

describe("listDirectory and statFile on a real directory (find as a child process)", () => {
  let dir = "";
  let cleanup: () => Promise<void> = async () => {};
  before(async () => {
    ({ dir, cleanup } = await tempDir("sm-scan-"));
    await writeFile(path.join(dir, "a.sqfs"), "12345");
  });
  after(() => cleanup());

  test("the directory's device is stat's st_dev", async () => {
    const listing = await listDirectory(run, dir, 5000);
    assert.equal(listing.dir.dev, majorMinorOf((await stat(dir, { bigint: true })).dev));
    assert.equal(listing.dir.ino, (await stat(dir)).ino);
  });
  test("a missing directory is a ScanError ENOENT", async () => {
    await assert.rejects(listDirectory(run, path.join(dir, "nope"), 5000), (e: unknown) => e instanceof ScanError && e.code === "ENOENT" && !e.timedOut);
  });
  test("statFile: size, mtime and inode of one file", async () => {
    const st = await stat(path.join(dir, "a.sqfs"));
    const got = await statFile(run, path.join(dir, "a.sqfs"), 5000);
    assert.equal(got.size, 5);
    assert.equal(got.ino, st.ino);
    assert.equal(got.type, "file");
  });
  test("an entry deleted while find lists: the rest is listed, no error", async () => {
    await mkdir(path.join(dir, "sub"));
    // find exits 1 naming the vanished entry; the runner's failure carries what it printed.
    const vanishing: Runner = async (file, args, options) => {
      const out = await run(file, args, options);
      const err = new CommandFailedError([file, ...args], 1, null, `find: '${path.join(dir, "gone.sqfs")}': No such file or directory\n`, 1, false, false);
      err.stdout = out.stdout;
      throw err;
    };
    const listing = await listDirectory(vanishing, dir, 5000);
    assert.deepEqual(listing.entries.map((e) => e.file), ["a.sqfs", "sub"]);
    await rm(path.join(dir, "sub"), { recursive: true });
  });
  test("a scan that does not finish in time is a ScanError that says it timed out", async () => {
    const hanging: Runner = (file, args, options) => run("sleep", ["10"], { ...options, timeoutMs: 200 });
    await assert.rejects(listDirectory(hanging, dir, 200), (e: unknown) => e instanceof ScanError && e.timedOut && e.code === "ETIMEDOUT");
  });
});

describe("unchanged: when the last listing of datadir stands (one stat of the directory a tick)", () => {
  const T = 1_700_000_000_000;
  const dir = { dev: "0:40", ino: 2, mtimeMs: T - 60_000, ctimeMs: T - 60_000 };
  const listing = (mtimes: number[]) => ({ dir, entries: mtimes.map((m, i) => ({ ...fileEntry(DATA, `i${i}.sqfs`), mtimeMs: m })) });
  const config = { rescanInterval: 1800, interval: 5 };
  const old = listing([T - 3_600_000, T - 7_200_000]);
  const cases: [string, Parameters<typeof unchanged>, boolean][] = [
    ["nothing changed: it stands", [old, dir, T, T + 5000, config], true],
    ["an image added or removed (mtime and ctime moved): listed", [old, { ...dir, mtimeMs: T + 1000, ctimeMs: T + 1000 }, T, T + 5000, config], false],
    ["a rename over an image (ctime moved)", [old, { ...dir, ctimeMs: T + 1000 }, T, T + 5000, config], false],
    ["another file system mounted there (device)", [old, { ...dir, dev: "0:41" }, T, T + 5000, config], false],
    ["the directory changed within the slack before the listing (mtimes to the second)", [{ ...old, dir: { ...dir, mtimeMs: T - 500 } }, { ...dir, mtimeMs: T - 500 }, T, T + 5000, config], false],
    ["an image written just before the listing (it may still grow): listed until settled", [listing([T - 3000]), dir, T, T + 5000, config], false],
    ["the safety net: rescan_interval since the last listing", [old, dir, T, T + 1_800_000, config], false],
    ["a hidden file's time does not matter", [{ dir, entries: [{ ...fileEntry(DATA, ".tmp"), mtimeMs: T }] }, dir, T, T + 5000, config], true],
  ];
  for (const [title, args, want] of cases) test(title, () => assert.equal(unchanged(...args), want));
});

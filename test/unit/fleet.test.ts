import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { MAX_SKEW_MS, sign, Verifier } from "../../src/fleet/auth.js";
import { chmodSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync, chownSync } from "node:fs";
import * as fs from "node:fs";
import path from "node:path";
import { chooseSources, leader, live, publishedChecksums, recordFileName, signRecord, verifyRecordLines, type PeerRecord, type RecordImage } from "../../src/fleet/records.js";
import { imageUrl, parseImageUrl, parseRange } from "../../src/fleet/server.js";
import { fleetIo, fleetLayout, type FleetIoResult } from "../../src/fleet/shared-dir.js";
import { tempDir } from "./helpers.js";

const KEY = Buffer.alloc(32, 7);
const T = 1_800_000_000_000;
const ID = { file: "coco.sqfs", size: 1000, mtimeMs: 1_700_000_000_500 };
const SHA = "a".repeat(64);

describe("auth: HMAC of the request and its time, nonces not accepted twice", () => {
  const req = { method: "GET", path: "/v1/images/coco.sqfs?size=1000&mtime=1", range: "bytes=10-", by: "node1:7823", to: "node2:7823" };

  test("a request signed with the key is accepted once; its replay is refused", () => {
    const v = new Verifier();
    const header = sign(KEY, req, T);
    assert.deepEqual(v.verify([KEY], header, req, T + 5), { ok: true, nonce: /n=([0-9a-f]+)/.exec(header)?.[1], by: "node1:7823", key: KEY });
    assert.deepEqual(v.verify([KEY], header, req, T + 10), { ok: false, reason: "replayed" });
  });

  test("another key, another path or range, an old time, garbage: refused with the reason", () => {
    const v = new Verifier();
    assert.deepEqual(v.verify([Buffer.alloc(32, 8)], sign(KEY, req, T), req, T), { ok: false, reason: "bad-signature" });
    assert.deepEqual(v.verify([KEY], sign(KEY, req, T), { ...req, path: "/v1/images/other.sqfs?size=1000&mtime=1" }, T), { ok: false, reason: "bad-signature" });
    assert.deepEqual(v.verify([KEY], sign(KEY, req, T), { ...req, range: undefined }, T), { ok: false, reason: "bad-signature" });
    assert.deepEqual(v.verify([KEY], sign(KEY, req, T), req, T + MAX_SKEW_MS + 1), { ok: false, reason: "expired" });
    assert.deepEqual(v.verify([KEY], sign(KEY, req, T + MAX_SKEW_MS + 1), req, T), { ok: false, reason: "expired" });
    assert.deepEqual(v.verify([KEY], undefined, req, T), { ok: false, reason: "missing" });
    assert.deepEqual(v.verify([KEY], "Bearer abc", req, T), { ok: false, reason: "malformed" });
    assert.deepEqual(v.verify([], sign(KEY, req, T), req, T), { ok: false, reason: "bad-signature" }, "no key: nothing verifies");
    assert.deepEqual(v.verify([KEY], sign(KEY, req, T), { ...req, to: "node3:7823" }, T), { ok: false, reason: "bad-signature" }, "meant for another node");
    assert.deepEqual(v.verify([KEY], sign(KEY, { ...req, by: "bad name:1" }, T), req, T), { ok: false, reason: "malformed" }, "a requester that is not HOST:PORT");
  });
});

function image(over: Partial<RecordImage> = {}): RecordImage {
  return { ...ID, sha256: SHA, state: "cached", progress: ID.size, from: "server", since: 0, ...over };
}

function record(node: string, images: RecordImage[], updatedAt = T): PeerRecord {
  return { v: 1, node, updatedAt, images };
}

describe("records", () => {
  test("signed, one per line; a bad line is ignored with its reason, not the others", () => {
    const good = record("n1:1", [image()]);
    const text = [signRecord(KEY, good), "{half\n", signRecord(KEY, { ...record("n2:1", []), v: 2 } as unknown as PeerRecord), signRecord(KEY, record("n3:1", [image(), { ...image(), file: "../etc/passwd" }]))].join("");
    const { records, ignored } = verifyRecordLines(text, [KEY], T);
    assert.deepEqual(records.map((r) => r.node), ["n1:1"]);
    assert.deepEqual(ignored.map((i) => i.reason), ["unsigned", "malformed", "malformed"], "a record with an entry naming a path is ignored whole");
  });

  test("live: not this node's, not older than the stale limit", () => {
    const rs = [record("me:1", []), record("old:1", [], T - 61_000), record("new:1", [], T - 1000)];
    assert.deepEqual(live(rs, "me:1", T, 60_000).map((r) => r.node), ["new:1"]);
  });

  test("a record's file name is its node, made safe", () => {
    assert.equal(recordFileName("10.0.0.7:7823"), "10.0.0.7_7823.json");
    assert.equal(recordFileName("[fe80::1]:7823"), "_fe80__1__7823.json");
    assert.equal(recordFileName("../../x:1"), ".._.._x_1.json");
  });
});

describe("choosing sources", () => {
  const noRandom = () => 0.5;

  test("verified holders first, then copies in progress furthest ahead first; not another version, not one without a checksum, not avoided ones", () => {
    const rs = [
      record("copy-behind:1", [image({ state: "copying", progress: 100, sha256: undefined })]),
      record("holder:1", [image()]),
      record("copy-ahead:1", [image({ state: "copying", progress: 900, sha256: undefined })]),
      record("older:1", [image({ size: 999 })]),
      record("unverified:1", [image({ sha256: undefined })]),
      record("avoided:1", [image()]),
    ];
    assert.deepEqual(
      chooseSources(rs, "me:1", ID, new Set(["avoided:1"]), noRandom).map((s) => s.node),
      ["holder:1", "copy-ahead:1", "copy-behind:1"],
    );
  });

  test("the same mtime to the second is the same version (as cp --preserve=timestamps keeps it)", () => {
    const rs = [record("holder:1", [image({ mtimeMs: ID.mtimeMs + 300 })])];
    assert.equal(chooseSources(rs, "me:1", ID, new Set(), noRandom).length, 1);
    assert.equal(chooseSources([record("holder:1", [image({ mtimeMs: ID.mtimeMs + 1000 })])], "me:1", ID, new Set(), noRandom).length, 0);
  });

  test("never a copy that follows this node, directly or round a chain", () => {
    const rs = [
      record("b:1", [image({ state: "copying", from: "me:1", progress: 50 })]),
      record("c:1", [image({ state: "copying", from: "b:1", progress: 40 })]),
      record("d:1", [image({ state: "copying", from: "e:1", progress: 30 })]),
      record("e:1", [image({ state: "copying", from: "d:1", progress: 30 })]),
      record("f:1", [image({ state: "copying", from: "server", progress: 10 })]),
    ];
    assert.deepEqual(chooseSources(rs, "me:1", ID, new Set(), noRandom).map((s) => s.node), ["f:1"]);
  });

  test("holders in a random order, to spread the load", () => {
    const rs = ["h1:1", "h2:1", "h3:1"].map((n) => record(n, [image()]));
    const firsts = new Set<string>();
    let seed = 1;
    const random = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
    for (let i = 0; i < 30; i++) firsts.add((chooseSources(rs, "me:1", ID, new Set(), random)[0] as { node: string }).node);
    assert.equal(firsts.size, 3);
  });

  test("leader: of the nodes starting it from the file server, the first to start; ties by name", () => {
    const rs = [record("b:1", [image({ state: "copying", since: 100 })]), record("c:1", [image({ state: "copying", since: 50, from: "b:1" })])];
    assert.equal(leader(rs, { node: "a:1", since: 100 }, ID), "a:1", "a tie with b: a's name is first");
    assert.equal(leader(rs, { node: "z:1", since: 100 }, ID), "b:1");
    assert.equal(leader(rs, { node: "z:1", since: 99 }, ID), "z:1", "c started earlier but follows a peer: not a candidate");
  });

  test("the checksums the fleet publishes for this version, with who gives each", () => {
    assert.deepEqual(publishedChecksums([record("a:1", [image({ sha256: undefined })]), record("b:1", [image()])], ID), new Map([[SHA, ["b:1"]]]));
    assert.deepEqual(publishedChecksums([record("b:1", [image({ size: 5 })])], ID), new Map());
    assert.equal(publishedChecksums([record("b:1", [image()]), record("c:1", [image({ sha256: "b".repeat(64) })])], ID).size, 2, "two different ones: the caller's alarm");
  });
});

describe("requests", () => {
  test("the URL names an image file and its version; nothing else parses", () => {
    assert.deepEqual(parseImageUrl(imageUrl(ID)), { ...ID, mtimeMs: Math.round(ID.mtimeMs) });
    assert.deepEqual(parseImageUrl(imageUrl({ ...ID, file: "a b#?.sqfs" })), { ...ID, file: "a b#?.sqfs", mtimeMs: Math.round(ID.mtimeMs) });
    for (const bad of ["/v1/images/..%2Fx?size=1&mtime=1", "/v1/images/../x?size=1&mtime=1", "/v1/images/.hidden?size=1&mtime=1", "/v1/images/x?size=-1&mtime=1", "/v1/images/x?mtime=1&size=abc", "/etc/passwd", "/v1/images/%E0%A4%A?size=1&mtime=1"]) {
      assert.equal(parseImageUrl(bad), undefined, bad);
    }
  });

  test("Range: only an open-ended one from a byte", () => {
    assert.equal(parseRange(undefined), 0);
    assert.equal(parseRange("bytes=4096-"), 4096);
    assert.equal(parseRange("bytes=0-10"), undefined);
    assert.equal(parseRange("bytes=-10"), undefined);
    assert.equal(parseRange("bytes=1-,5-"), undefined);
  });
});

/** fleetIo on real files in a temporary directory, in this process (the daemon runs the same function in a child). */
describe("the fleet's files: StrictModes directories, one open of the key, exclusive temporary records", () => {
  const layoutOf = (datadir: string) => fleetLayout({ datadir, peerDirOwner: 0 });
  const key = (datadir: string) => fleetIo(fs, { op: "read-key", walk: layoutOf(datadir).keyDir, file: "peer.key", keyOwners: [0], maxBytes: 4097 }, () => "");
  const refusal = (r: FleetIoResult) => (r.ok ? "" : `${r.refused.path} ${r.refused.problem}; ${r.refused.fix}`);
  async function datadir(body: (dir: string) => void): Promise<void> {
    const { dir, cleanup } = await tempDir("sm-fleet-io-");
    try {
      chmodSync(dir, 0o777);
      mkdirSync(path.join(dir, ".scratch_manager"), { mode: 0o755 });
      body(dir);
    } finally {
      await cleanup();
    }
  }

  test("a good layout: the key read, a record written and read back, no temporary file left", () =>
    datadir((dir) => {
      writeFileSync(path.join(dir, ".scratch_manager", "peer.key"), Buffer.alloc(32, 1), { mode: 0o600 });
      const r = key(dir);
      assert.ok(r.ok && "key" in r && Buffer.from(r.key, "base64").equals(Buffer.alloc(32, 1)));
      const walk = layoutOf(dir).recordsDir;
      assert.deepEqual(fleetIo(fs, { op: "write-record", walk, file: "n1_1.json" }, () => "SMR1 x\n"), { ok: true, written: true });
      assert.equal((statSync(path.join(dir, ".scratch_manager", "peers")).mode & 0o777), 0o755, "the records' directory made, 0755");
      assert.deepEqual(readdirSync(path.join(dir, ".scratch_manager", "peers")), ["n1_1.json"]);
      assert.deepEqual(fleetIo(fs, { op: "read-records", walk, maxFiles: 10, maxFileBytes: 100, maxTotalBytes: 1000 }, () => ""), { ok: true, lines: ["SMR1 x"], cutFiles: 0, cutBytes: 0, skipped: 0 });
    }));

  test("a symlink anywhere on the way, or as the key, is refused, naming the path", () =>
    datadir((dir) => {
      const real = path.join(dir, "real");
      mkdirSync(real, { mode: 0o755 });
      writeFileSync(path.join(real, "peer.key"), Buffer.alloc(32, 1), { mode: 0o600 });
      fs.renameSync(path.join(dir, ".scratch_manager"), path.join(dir, "moved"));
      symlinkSync(real, path.join(dir, ".scratch_manager"));
      assert.match(refusal(key(dir)), /\/\.scratch_manager is a symbolic link, not a directory; rm .*install -d -o root -m 0755/);
      fs.rmSync(path.join(dir, ".scratch_manager"));
      fs.renameSync(path.join(dir, "moved"), path.join(dir, ".scratch_manager"));
      symlinkSync(path.join(real, "peer.key"), path.join(dir, ".scratch_manager", "peer.key"));
      assert.match(refusal(key(dir)), /peer\.key is a symbolic link/);
    }));

  test("a directory writable by others or owned by a user is refused; so is a key others can read", () =>
    datadir((dir) => {
      const own = path.join(dir, ".scratch_manager");
      chmodSync(own, 0o777);
      assert.match(refusal(key(dir)), /is writable by group or others \(mode 777\); chmod go-w/);
      chmodSync(own, 0o755);
      chownSync(own, 65534, 65534);
      assert.match(refusal(key(dir)), /is owned by uid 65534, not by uid 0; chown 0/);
      chownSync(own, 0, 0);
      writeFileSync(path.join(own, "peer.key"), Buffer.alloc(32, 1), { mode: 0o644 });
      chmodSync(path.join(own, "peer.key"), 0o644);
      assert.match(refusal(key(dir)), /readable by others \(mode 644\); chmod 600/);
    }));

  test("a record is never written through a name someone planted: the planted link's target is untouched", () =>
    datadir((dir) => {
      const peers = path.join(dir, ".scratch_manager", "peers");
      mkdirSync(peers, { mode: 0o755 });
      const victim = path.join(dir, "victim");
      writeFileSync(victim, "root's file\n");
      symlinkSync(victim, path.join(peers, "n1_1.json"));
      symlinkSync(victim, path.join(peers, ".n1_1.json.tmp"));
      const walk = layoutOf(dir).recordsDir;
      assert.deepEqual(fleetIo(fs, { op: "write-record", walk, file: "n1_1.json" }, () => "SMR1 y\n"), { ok: true, written: true });
      assert.equal(readFileSync(victim, "utf8"), "root's file\n");
      assert.equal(fs.lstatSync(path.join(peers, "n1_1.json")).isFile(), true, "the record replaced the link");
      // Reading skips what is not a regular file (a link, a FIFO) and anything over the bounds.
      symlinkSync(victim, path.join(peers, "link.json"));
      writeFileSync(path.join(peers, "big.json"), "x".repeat(200));
      const read = fleetIo(fs, { op: "read-records", walk, maxFiles: 10, maxFileBytes: 100, maxTotalBytes: 1000 }, () => "");
      assert.ok(read.ok && "lines" in read);
      assert.deepEqual(read.lines, ["SMR1 y"]);
      assert.equal(read.skipped, 2);
    }));
});

describe("a node starting a copy does not follow one that started it after", () => {
  test("a copy from the file server with no byte yet, started later (or at once, by name), is left out: it will follow this node", () => {
    const electing = (since: number) => image({ state: "copying", from: "server", progress: 0, since, sha256: undefined });
    const rs = [record("later:1", [electing(200)]), record("earlier:1", [electing(50)]), record("b-same:1", [electing(100)]), record("ahead:1", [image({ state: "copying", from: "server", progress: 10, since: 300, sha256: undefined })])];
    const chosen = chooseSources(rs, "a-me:1", ID, new Set(), () => 0.5, 100).map((s) => s.node);
    assert.deepEqual(chosen.sort(), ["ahead:1", "earlier:1"], "the one that started first, and one with bytes already; not the later nor the tie after this name");
    assert.equal(chooseSources(rs, "a-me:1", ID, new Set(), () => 0.5).length, 4, "without a start time, all four as before");
  });
});

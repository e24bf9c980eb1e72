import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { MAX_SKEW_MS, sign, Verifier } from "../../src/fleet/auth.js";
import { chooseSources, knownChecksum, leader, live, parseRecords, recordFileName, type PeerRecord, type RecordImage } from "../../src/fleet/records.js";
import { imageUrl, parseImageUrl, parseRange } from "../../src/fleet/server.js";
import { keyProblem } from "../../src/fleet/shared-dir.js";

const KEY = Buffer.alloc(32, 7);
const T = 1_800_000_000_000;
const ID = { file: "coco.sqfs", size: 1000, mtimeMs: 1_700_000_000_500 };
const SHA = "a".repeat(64);

describe("auth: HMAC of the request and its time, nonces not accepted twice", () => {
  const req = { method: "GET", path: "/v1/images/coco.sqfs?size=1000&mtime=1", range: "bytes=10-" };

  test("a request signed with the key is accepted once; its replay is refused", () => {
    const v = new Verifier();
    const header = sign(KEY, req, T);
    assert.deepEqual(v.verify([KEY], header, req, T + 5), { ok: true });
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
  });
});

function image(over: Partial<RecordImage> = {}): RecordImage {
  return { ...ID, sha256: SHA, state: "cached", progress: ID.size, from: "server", since: 0, ...over };
}

function record(node: string, images: RecordImage[], updatedAt = T): PeerRecord {
  return { v: 1, node, updatedAt, images };
}

describe("records", () => {
  test("parsed one per line; a bad line or a bad entry is skipped, not the others", () => {
    const good = record("n1:1", [image()]);
    const text = [JSON.stringify(good), "{half", JSON.stringify({ v: 2, node: "x", updatedAt: T, images: [] }), JSON.stringify(record("n2:1", [image(), { ...image(), file: "../etc/passwd" }, { ...image(), sha256: "zz" }]))].join("\n");
    const parsed = parseRecords(text);
    assert.deepEqual(parsed.map((r) => r.node), ["n1:1", "n2:1"]);
    assert.equal(parsed[1]?.images.length, 1, "an entry with a path or a bad checksum is dropped");
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

  test("the checksum the fleet knows for this version", () => {
    assert.equal(knownChecksum([record("a:1", [image({ sha256: undefined })]), record("b:1", [image()])], ID), SHA);
    assert.equal(knownChecksum([record("b:1", [image({ size: 5 })])], ID), undefined);
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

describe("the fleet key", () => {
  const file = "/data/.scratch_manager/peer.key";
  test("usable: 32 bytes or more, mode 600 or stricter, owned by root", () => {
    assert.equal(keyProblem({ kind: "present", mode: 0o600, uid: 0, bytes: Buffer.alloc(32) }, file, 0), undefined);
    assert.equal(keyProblem({ kind: "present", mode: 0o400, uid: 0, bytes: Buffer.alloc(64) }, file, 0), undefined);
  });
  test("each problem in one line that says what to do", () => {
    assert.match(keyProblem({ kind: "missing" }, file, 0) ?? "", /does not exist; make it once with: head -c 32 \/dev\/urandom > \/data\/\.scratch_manager\/peer\.key; chmod 600/);
    assert.match(keyProblem({ kind: "present", mode: 0o644, uid: 0, bytes: Buffer.alloc(32) }, file, 0) ?? "", /readable by others \(mode 644\); chmod 600/);
    assert.match(keyProblem({ kind: "present", mode: 0o640, uid: 0, bytes: Buffer.alloc(32) }, file, 0) ?? "", /mode 640/);
    assert.match(keyProblem({ kind: "present", mode: 0o600, uid: 1000, bytes: Buffer.alloc(32) }, file, 0) ?? "", /owned by uid 1000, not root/);
    assert.match(keyProblem({ kind: "present", mode: 0o600, uid: 0, bytes: Buffer.alloc(31) }, file, 0) ?? "", /has 31 bytes, fewer than 32/);
  });
});

/**
 * Issue 17: the pure logic that makes peer fill safe against datadir writers
 * and the network. Records are believed only when signed with the fleet key
 * (and within bounds), peer names are strict HOST:PORT, a request's
 * signature names the node it is for, a checksum is signed for one request,
 * and the source choice does work linear in the records, not quadratic.
 *
 * Every test here fails on the main of before issue 17: none of signRecord,
 * verifyRecordLines, parsePeerName, signChecksum or the by/to of sign exist
 * there, and chooseSources rebuilt a map of every record per candidate.
 */
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { describe, test } from "node:test";
import { sign, signChecksum, verifyChecksum, Verifier } from "../../src/fleet/auth.js";
import { formatPeerName, parsePeerName } from "../../src/fleet/peer-name.js";
import {
  chooseSources,
  FUTURE_SKEW_MS,
  RECORD_MAX_BYTES,
  RECORD_MAX_IMAGES,
  RECORDS_MAX_FILES,
  RECORDS_MAX_TOTAL_BYTES,
  signRecord,
  verifyRecordLines,
  type IgnoredReason,
  type PeerRecord,
  type RecordImage,
} from "../../src/fleet/records.js";

const KEY = Buffer.alloc(32, 7);
const OTHER_KEY = Buffer.alloc(32, 8);
const T = 1_800_000_000_000;
const ID = { file: "coco.sqfs", size: 1000, mtimeMs: 1_700_000_000_500 };
const SHA = "a".repeat(64);

function image(over: Partial<RecordImage> = {}): RecordImage {
  return { ...ID, sha256: SHA, state: "cached", progress: ID.size, from: "server", since: 0, ...over };
}

/** An entry without a checksum yet: no sha256 key at all (as JSON.parse gives it back). */
function unhashed(over: Partial<RecordImage> = {}): RecordImage {
  const entry = image(over);
  delete entry.sha256;
  return entry;
}

function record(node: string, images: RecordImage[], updatedAt = T): PeerRecord {
  return { v: 1, node, updatedAt, images };
}

/** A line signed as the design says ("SMR1 <hex HMAC-SHA256(key, JSON)> <JSON>"), over any text: to sign what signRecord would never make. */
function signJson(key: Buffer, json: string): string {
  return `SMR1 ${createHmac("sha256", key).update(json).digest("hex")} ${json}\n`;
}

function reasons(text: string, keys: readonly Buffer[] = [KEY], now = T): IgnoredReason[] {
  return verifyRecordLines(text, keys, now).ignored.map((i) => i.reason);
}

describe("records: only lines signed with the fleet key, within bounds, are believed", () => {
  const good = record("node1.cluster:7823", [image(), unhashed({ file: "other.sqfs", state: "copying", progress: 10, from: "10.0.0.7:7823", since: T - 5000 })]);

  test("a signed record is one line, SMR1, the HMAC of its JSON, the JSON; it verifies to the same record", () => {
    const line = signRecord(KEY, good);
    assert.match(line, /^SMR1 [0-9a-f]{64} \{.*\}\n$/);
    assert.equal(line.indexOf("\n"), line.length - 1, "one line");
    const json = JSON.stringify(good);
    assert.equal(line, signJson(KEY, json), "the signature is the HMAC-SHA256 of the JSON, under the key");
    assert.deepEqual(verifyRecordLines(line, [KEY], T), { records: [good], ignored: [] });
  });

  test("unsigned (the plain JSON records of before): ignored as unsigned, never believed", () => {
    const r = verifyRecordLines(`${JSON.stringify(good)}\n`, [KEY], T);
    assert.deepEqual(r.records, []);
    assert.deepEqual(r.ignored.map((i) => i.reason), ["unsigned"]);
  });

  test("a bad signature, or a good one under another key: ignored as bad_signature; the previous key still verifies while it is among the keys", () => {
    const line = signRecord(KEY, good);
    const sig = line.slice(5, 69);
    const flipped = `SMR1 ${sig.slice(0, 10)}${sig[10] === "0" ? "1" : "0"}${sig.slice(11)}${line.slice(69)}`;
    assert.notEqual(flipped, line);
    assert.deepEqual(reasons(flipped), ["bad_signature"]);
    assert.deepEqual(reasons(signRecord(OTHER_KEY, good)), ["bad_signature"], "another fleet's key");
    assert.deepEqual(reasons(line, []), ["bad_signature"], "no key at all: nothing verifies");
    assert.deepEqual(verifyRecordLines(line, [OTHER_KEY, KEY], T).records, [good], "the previous key, during its grace");
  });

  test("a signed record whose JSON was changed afterwards (another node, another checksum, another source): bad_signature", () => {
    const line = signRecord(KEY, good);
    const tampered = [
      line.replace("node1.cluster:7823", "node2.cluster:7823"),
      line.replace(SHA, "b".repeat(64)),
      line.replace('"from":"10.0.0.7:7823"', '"from":"10.0.0.8:7823"'),
      line.replace(`"updatedAt":${T}`, `"updatedAt":${T + 1}`),
    ];
    for (const t of tampered) {
      assert.notEqual(t, line, "the replacement happened");
      assert.deepEqual(reasons(t), ["bad_signature"], t.slice(0, 120));
    }
  });

  test("dated in the future beyond the skew: ignored as future (it would never go stale); within the skew: believed", () => {
    assert.deepEqual(reasons(signRecord(KEY, record("n.cluster:1", [image()], T + 3600_000))), ["future"]);
    assert.deepEqual(reasons(signRecord(KEY, record("n.cluster:1", [image()], T + FUTURE_SKEW_MS + 1000))), ["future"]);
    assert.equal(verifyRecordLines(signRecord(KEY, record("n.cluster:1", [image()], T + FUTURE_SKEW_MS - 1000)), [KEY], T).records.length, 1);
    assert.equal(verifyRecordLines(signRecord(KEY, record("n.cluster:1", [image()], T - 3600_000)), [KEY], T).records.length, 1, "old is not this function's business (live() drops stale records)");
  });

  test("a line larger than RECORD_MAX_BYTES, even signed and with few enough images: ignored as too_large", () => {
    const images = Array.from({ length: 12_000 }, (_, i) => image({ file: `${"x".repeat(300)}-${i}.sqfs` }));
    assert.ok(images.length <= RECORD_MAX_IMAGES);
    const line = signRecord(KEY, record("n.cluster:1", images));
    assert.ok(line.length > RECORD_MAX_BYTES, `the line is ${line.length} bytes`);
    const r = verifyRecordLines(line, [KEY], T);
    assert.deepEqual(r.records, []);
    assert.deepEqual(r.ignored.map((i) => i.reason), ["too_large"]);
  });

  test("more than RECORD_MAX_IMAGES images, within the size bound: ignored as too_many_images; exactly the bound: believed", () => {
    const small = (n: number) => Array.from({ length: n }, (_, i) => image({ file: `i${i}.sqfs`, sha256: undefined }));
    const over = signRecord(KEY, record("n.cluster:1", small(RECORD_MAX_IMAGES + 1)));
    assert.ok(over.length < RECORD_MAX_BYTES, "only the count is over");
    assert.deepEqual(reasons(over), ["too_many_images"]);
    const at = verifyRecordLines(signRecord(KEY, record("n.cluster:1", small(RECORD_MAX_IMAGES))), [KEY], T);
    assert.equal(at.records[0]?.images.length, RECORD_MAX_IMAGES);
  });

  test("malformed after a good signature (not JSON, not a record, a bad entry): ignored as malformed", () => {
    const bodies = [
      "not json at all",
      "[]",
      "null",
      "42",
      JSON.stringify({ v: 2, node: "n.cluster:1", updatedAt: T, images: [] }),
      JSON.stringify({ v: 1, updatedAt: T, images: [] }),
      JSON.stringify({ v: 1, node: "n.cluster:1", updatedAt: "now", images: [] }),
      JSON.stringify({ v: 1, node: "n.cluster:1", updatedAt: T, images: "all" }),
      JSON.stringify(record("n.cluster:1", [image({ file: "../../etc/passwd" })])),
      JSON.stringify(record("n.cluster:1", [image({ sha256: "zz" })])),
      JSON.stringify(record("n.cluster:1", [{ ...image(), state: "stolen" } as unknown as RecordImage])),
    ];
    for (const body of bodies) {
      const r = verifyRecordLines(signJson(KEY, body), [KEY], T);
      assert.deepEqual(r.records, [], body.slice(0, 80));
      assert.deepEqual(r.ignored.map((i) => i.reason), ["malformed"], body.slice(0, 80));
    }
  });

  test("a bad peer name, as the record's node or an image's from, makes a bad record (malformed), even signed", () => {
    const badNames = ["127.0.0.1:1 evil", "n.cluster:0", "n.cluster:65536", "a:b:c", "n.cluster", "", "n.cluster:80/x", "ev\u0007il:1", "evil\nhost:1", "x y", `${"a".repeat(300)}:1`];
    for (const bad of badNames) {
      const asNode = verifyRecordLines(signRecord(KEY, record(bad, [image()])), [KEY], T);
      assert.deepEqual(asNode.records, [], `node ${JSON.stringify(bad)}`);
      assert.deepEqual(asNode.ignored.map((i) => i.reason), ["malformed"], `node ${JSON.stringify(bad)}`);
      const asFrom = verifyRecordLines(signRecord(KEY, record("n.cluster:1", [image({ state: "copying", from: bad })])), [KEY], T);
      assert.deepEqual(asFrom.records, [], `from ${JSON.stringify(bad)}`);
      assert.deepEqual(asFrom.ignored.map((i) => i.reason), ["malformed"], `from ${JSON.stringify(bad)}`);
    }
  });

  test("one bad line never hides the good ones; each ignored line with a digest that is stable and its own", () => {
    const a = signRecord(KEY, record("a.cluster:1", [image()]));
    const b = signRecord(KEY, record("b.cluster:1", [image()]));
    const unsigned = `${JSON.stringify(record("c.cluster:1", [image()]))}\n`;
    const unsigned2 = `${JSON.stringify(record("d.cluster:1", [image()]))}\n`;
    const other = signRecord(OTHER_KEY, record("e.cluster:1", [image()]));
    const text = a + unsigned + other + b + unsigned2;
    const r = verifyRecordLines(text, [KEY], T);
    assert.deepEqual(r.records.map((x) => x.node).sort(), ["a.cluster:1", "b.cluster:1"]);
    assert.deepEqual(r.ignored.map((i) => i.reason), ["unsigned", "bad_signature", "unsigned"]);
    for (const i of r.ignored) assert.match(i.digest, /^[0-9a-f]{64}$/);
    assert.equal(new Set(r.ignored.map((i) => i.digest)).size, 3, "three different lines, three digests");
    assert.deepEqual(verifyRecordLines(text, [KEY], T + 1000).ignored, r.ignored, "the same lines read again: the same digests (counted once by the caller)");
  });

  test("the bounds are the design's", () => {
    assert.equal(RECORD_MAX_BYTES, 4 * 1024 * 1024);
    assert.equal(RECORD_MAX_IMAGES, 20_000);
    assert.equal(RECORDS_MAX_FILES, 20_000);
    assert.equal(RECORDS_MAX_TOTAL_BYTES, 48 * 1024 * 1024, "under the 64 MiB a child's output may have");
    assert.equal(FUTURE_SKEW_MS, 60_000);
  });
});

describe("peer names: strict HOST:PORT", () => {
  test("host names, IPv4 literals and bracketed IPv6 literals, with a port in 1..65535", () => {
    const ok: [string, { host: string; port: number }][] = [
      ["node17.cluster:7823", { host: "node17.cluster", port: 7823 }],
      ["localhost:1", { host: "localhost", port: 1 }],
      ["a-b.c-d.example:65535", { host: "a-b.c-d.example", port: 65535 }],
      ["10.0.0.7:7823", { host: "10.0.0.7", port: 7823 }],
      ["127.0.0.1:80", { host: "127.0.0.1", port: 80 }],
      ["[fe80::1]:7823", { host: "fe80::1", port: 7823 }],
      ["[::1]:1", { host: "::1", port: 1 }],
      ["[2001:db8::7]:443", { host: "2001:db8::7", port: 443 }],
    ];
    for (const [text, want] of ok) assert.deepEqual(parsePeerName(text), want, text);
    // The longest a DNS name may be: labels of 63, 253 in all.
    const longest = `${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(61)}`;
    assert.equal(longest.length, 253);
    assert.deepEqual(parsePeerName(`${longest}:7823`), { host: longest, port: 7823 });
  });

  test("refused: spaces, empty, no or bad port, several colons, unbracketed IPv6, control characters, paths, over-long names and labels", () => {
    const bad = [
      "",
      ":",
      ":7823",
      "host",
      "host:",
      "host:0",
      "host:65536",
      "host:99999",
      "host:-1",
      "host:+80",
      "host: 80",
      "host :80",
      "a b:80",
      " host:80",
      "host:80 ",
      "a:b:c",
      "fe80::1:7823",
      "[fe80::1:7823",
      "[fe80::1]",
      "[not-ipv6]:80",
      "host:80\n",
      "ho\nst:80",
      "ho\tst:80",
      "ho\u0000st:80",
      "ho\u0007st:80",
      "ho\u001bst:80",
      "ho\u007fst:80",
      "host:80/path",
      "user@host:80",
      "http://host:80",
      "ho_st:80",
      `${"a".repeat(64)}.cluster:80`,
      `${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(62)}:80`,
      `${"a".repeat(100_000)}:80`,
    ];
    for (const text of bad) assert.equal(parsePeerName(text), undefined, JSON.stringify(text.slice(0, 60)));
  });

  test("formatPeerName brackets IPv6, and what it makes parses back", () => {
    assert.equal(formatPeerName("fe80::1", 7823), "[fe80::1]:7823");
    assert.equal(formatPeerName("10.0.0.7", 7823), "10.0.0.7:7823");
    assert.equal(formatPeerName("node17.cluster", 1), "node17.cluster:1");
    for (const [host, port] of [["fe80::1", 7823], ["10.0.0.7", 1], ["node17.cluster", 65535]] as const) {
      assert.deepEqual(parsePeerName(formatPeerName(host, port)), { host, port });
    }
  });
});

describe("request signatures name who asks and whom", () => {
  const path = "/v1/images/coco.sqfs?size=1000&mtime=1700000000500";
  const A = "10.0.0.1:7823";
  const B = "10.0.0.2:7823";
  const BY = "10.0.0.9:7823";
  const NONCE = "00112233445566778899aabb";

  test("the header carries t, n, by and the HMAC of method, path, range, t, nonce, by and to", () => {
    const header = sign(KEY, { method: "GET", path, range: "bytes=10-", by: BY, to: A }, T, NONCE);
    const mac = createHmac("sha256", KEY).update(`GET\n${path}\nbytes=10-\n${T}\n${NONCE}\n${BY}\n${A}`).digest("hex");
    assert.equal(header, `SM-HMAC t=${T},n=${NONCE},by=${BY},s=${mac}`);
    const noRange = sign(KEY, { method: "GET", path, by: BY, to: A }, T, NONCE);
    assert.equal(noRange, `SM-HMAC t=${T},n=${NONCE},by=${BY},s=${createHmac("sha256", KEY).update(`GET\n${path}\n\n${T}\n${NONCE}\n${BY}\n${A}`).digest("hex")}`);
  });

  test("a signature for one node does not verify at another (no replay across nodes); nor with `by` changed", () => {
    const forA = sign(KEY, { method: "GET", path, by: BY, to: A }, T, NONCE);
    assert.notEqual(forA, sign(KEY, { method: "GET", path, by: BY, to: B }, T, NONCE), "to is signed");
    assert.deepEqual(new Verifier().verify([KEY], forA, { method: "GET", path, to: B }, T), { ok: false, reason: "bad-signature" });
    const atA = new Verifier().verify([KEY], forA, { method: "GET", path, to: A }, T);
    assert.equal(atA.ok, true, "at the node it was signed for, it verifies");
    const otherBy = forA.replace(`by=${BY}`, "by=10.0.0.66:7823");
    assert.notEqual(otherBy, forA);
    assert.deepEqual(new Verifier().verify([KEY], otherBy, { method: "GET", path, to: A }, T), { ok: false, reason: "bad-signature" }, "by is signed");
  });
});

describe("checksums signed for one request", () => {
  const c = { id: ID, sha256: SHA, nonce: "00112233445566778899aabb", by: "10.0.0.9:7823", to: "10.0.0.1:7823" };

  test("the HMAC of the image's identity (mtime in seconds), its SHA-256, the nonce and both names", () => {
    const sig = signChecksum(KEY, c);
    assert.match(sig, /^[0-9a-f]{64}$/);
    const want = createHmac("sha256", KEY).update(`sha256\n${ID.file}\n${ID.size}\n${Math.floor(ID.mtimeMs / 1000)}\n${SHA}\n${c.nonce}\n${c.by}\n${c.to}`).digest("hex");
    assert.equal(sig, want);
  });

  test("verifies for exactly what was signed; anything else changed, another key, or no signature: refused", () => {
    const sig = signChecksum(KEY, c);
    assert.equal(verifyChecksum([KEY], sig, c), true);
    assert.equal(verifyChecksum([OTHER_KEY, KEY], sig, c), true, "the previous key among the keys");
    assert.equal(verifyChecksum([KEY], sig, { ...c, id: { ...ID, mtimeMs: ID.mtimeMs + 300 } }), true, "the same mtime to the second is the same version");
    const changed = [
      { ...c, sha256: "b".repeat(64) },
      { ...c, nonce: "ffeeddccbbaa998877665544" },
      { ...c, by: "10.0.0.10:7823" },
      { ...c, to: "10.0.0.2:7823" },
      { ...c, id: { ...ID, file: "other.sqfs" } },
      { ...c, id: { ...ID, size: ID.size + 1 } },
      { ...c, id: { ...ID, mtimeMs: ID.mtimeMs + 1000 } },
    ];
    for (const other of changed) assert.equal(verifyChecksum([KEY], sig, other), false, JSON.stringify(other));
    assert.equal(verifyChecksum([OTHER_KEY], sig, c), false, "another key");
    assert.equal(verifyChecksum([], sig, c), false, "no key");
    for (const bad of [undefined, "", "zz", sig.slice(0, 63), `${sig}0`, SHA]) assert.equal(verifyChecksum([KEY], bad, c), false, String(bad));
  });
});

describe("choosing sources among 10,000 records: work linear in the records, the order as before", () => {
  const SELF = "self.fleet:7823";
  const name = (i: number) => `n${i}.fleet:7823`;

  /** 10,000 records: holders, copies from the file server and from each other, chains back to this node, another version, avoided nodes. */
  function fleet(): { records: PeerRecord[]; avoid: Set<string> } {
    const records: PeerRecord[] = [record(SELF, [image({ state: "copying", from: "server", progress: 1, sha256: undefined })])];
    const avoid = new Set<string>();
    for (let i = 1; i < 10_000; i++) {
      const progress = (i * 7919) % 1009;
      let img: RecordImage;
      if (i % 100 === 0) img = image();
      else if (i % 1000 === 50) img = image({ sha256: undefined });
      else if (i % 7 === 3) img = image({ size: ID.size + 1 });
      else if (i % 4 === 1) img = image({ state: "copying", from: "server", progress, sha256: undefined });
      else if (i % 4 === 2) img = image({ state: "copying", from: name(i - 1), progress, sha256: undefined });
      else if (i % 4 === 3) img = image({ state: "copying", from: SELF, progress, sha256: undefined });
      else img = image({ state: "copying", from: name(i - 1), progress, sha256: undefined });
      records.push(record(name(i), [img, image({ file: `other-${i}.sqfs` })]));
      if (i % 97 === 5) avoid.add(name(i));
    }
    return { records, avoid };
  }

  /** The order chooseSources gave before issue 17, computed plainly here: holders in the random order, then copies not leading back here, furthest ahead first, ties by name. */
  function expected(records: PeerRecord[], avoid: Set<string>, keys: number[]): string[] {
    const same = (e: RecordImage) => e.file === ID.file && e.size === ID.size && Math.floor(e.mtimeMs / 1000) === Math.floor(ID.mtimeMs / 1000);
    const entries = new Map<string, RecordImage>();
    for (const r of records) {
      const e = r.images.find(same);
      if (e) entries.set(r.node, e);
    }
    const leadsBack = (node: string) => {
      const seen = new Set<string>();
      let at: string | undefined = node;
      while (at !== undefined && at !== "server") {
        if (at === SELF || seen.has(at)) return true;
        seen.add(at);
        const e = entries.get(at);
        at = e?.state === "cached" ? "server" : e?.from;
      }
      return false;
    };
    const held: string[] = [];
    const copying: { node: string; progress: number }[] = [];
    for (const [node, e] of entries) {
      if (node === SELF || avoid.has(node)) continue;
      if (e.state === "cached") {
        if (e.sha256 !== undefined) held.push(node);
      } else if (!leadsBack(node)) copying.push({ node, progress: e.progress });
    }
    const shuffled = held.map((node, i) => ({ node, k: keys[i] as number })).sort((a, b) => a.k - b.k).map((h) => h.node);
    copying.sort((a, b) => b.progress - a.progress || a.node.localeCompare(b.node));
    return [...shuffled, ...copying.map((c) => c.node)];
  }

  test("at most a few reads of each record per choice (not one pass over all records per candidate), and the same order as before", () => {
    const { records, avoid } = fleet();
    let reads = 0;
    const limit = 20 * records.length;
    // Counts every read of a record from the array; a choice that rebuilds something per candidate reads the array millions of times: stopped early.
    const counted = new Proxy(records, {
      get(target, prop, receiver) {
        if (typeof prop === "string" && /^\d+$/.test(prop) && ++reads > limit) throw new Error(`chooseSources read more than ${limit} records from an array of ${records.length}`);
        return Reflect.get(target, prop, receiver) as unknown;
      },
    });
    // A random sequence known in advance: decreasing keys reverse the holders' order.
    let k = 1;
    const keys: number[] = [];
    const random = () => {
      k -= 1e-6;
      keys.push(k);
      return k;
    };
    const got = chooseSources(counted, SELF, ID, avoid, random).map((s) => s.node);
    assert.ok(reads <= limit, `${reads} reads`);
    const want = expected(records, avoid, keys);
    assert.ok(want.length > 2000, `a real choice: ${want.length} sources`);
    assert.ok(!got.includes(SELF), "never this node");
    assert.ok(got.every((n) => !avoid.has(n)), "never an avoided node");
    assert.deepEqual(got, want);
  });
});

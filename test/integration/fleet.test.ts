/**
 * Issue 13: peer fill. Several real daemons on one machine, each with its own
 * cachedir, mountdir, state and runtime directories and its own peer_listen
 * port, share one datadir: a FUSE file server (test/fixtures/faultfs.py)
 * without page cache (direct_io), whose link is capped to a rate, and which
 * counts the bytes it serves. Real images, real loop mounts, real HTTP
 * between the daemons; faults caused for real (kill -9, bytes flipped on a
 * node's SSD, a stale record, an image replaced, the key changed).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, writeFileSync, writeSync, closeSync, statSync, utimesSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { sign } from "../../src/fleet/auth.js";
import { signRecord, verifyRecordLines, type PeerRecord } from "../../src/fleet/records.js";
import { imageUrl } from "../../src/fleet/server.js";
import { FaultFs, makeImage, waitUntil, withRoot, type TestRoot } from "./harness.js";
import { bytesServed, cachedOn, get, sameBytes, startNode, status, statusSoon, statusText, type Node } from "./fleet-nodes.js";

const MB = 1024 * 1024;
/** Ports of this run's nodes: a random block, so that two runs on one machine do not meet. */
const PORT0 = 20_000 + Math.floor(Math.random() * 2000) * 10;

/** The fleet's key, as the administrator makes it: 32 random bytes, mode 600, in datadir/.scratch_manager/. */
function writeKey(fs: FaultFs, bytes = randomBytes(32), mode = 0o600): Buffer {
  const dir = path.join(fs.source, ".scratch_manager");
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, "peer.key");
  writeFileSync(file, bytes, { mode });
  chmodSync(file, mode);
  return bytes;
}

const partials = (n: Node) => readdirSync(n.cache).filter((f) => f.endsWith(".partial"));

/** A file server with a slow link (bytes/s), no page cache in front of it, counting what it serves. */
async function fileServer(root: TestRoot, rate: number): Promise<{ fs: FaultFs; counts: string }> {
  const counts = path.join(root.root, "counts.json");
  const fs = await FaultFs.start(root, root.data, { counts, rate, directIo: true });
  return { fs, counts };
}

test("three nodes pin one image at once: it leaves the file server once, the others fill from it and from each other as it is copied, each copy verified; status and metrics say where from", async () => {
  await withRoot("fleet-herd", async (root, track) => {
    const { fs, counts } = await fileServer(root, 8 * MB);
    writeKey(fs);
    const image = makeImage(root, path.join(fs.source, "alpha.sqfs"), { "data.bin": 24 * MB, "id.txt": "alpha" });
    const size = statSync(image).size;
    // One transfer at a time per node: the third node must take its copy from the second (a tree, not a star).
    const nodes = [0, 1, 2].map((i) => startNode(root, track, i, PORT0 + i, { pin: "alpha", peer_uploads: 1 }));
    const before = bytesServed(counts);
    await waitUntil("alpha cached on every node", () => nodes.every((n) => cachedOn(n, "alpha")), 60_000, 200);
    const served = bytesServed(counts) - before;
    assert.ok(served < 1.3 * size, `the file server sent ${(served / size).toFixed(2)}x the image (at most 1.3x: the copy, the slow mounts' metadata)`);
    for (const n of nodes) {
      assert.ok(sameBytes(path.join(n.cache, "alpha.sqfs"), image), `node ${n.i}: its copy is the image`);
      assert.equal(readFileSync(path.join(n.mnt, "alpha", "id.txt"), "utf8"), "alpha");
      assert.deepEqual(partials(n), [], `node ${n.i}: no partial file left`);
    }
    const totals = nodes.map((n) => status(n).peers?.counters);
    assert.equal(totals.reduce((s, c) => s + (c?.fromServerBytes ?? 0), 0), size, "one node copied from the file server");
    assert.equal(totals.reduce((s, c) => s + (c?.fromPeersBytes ?? 0), 0), 2 * size, "two filled from peers");
    const fills = nodes.flatMap((n) => n.d.logs.filter((l) => l.msg === "filled from peers, checksum verified").map((l) => ({ node: n.address, peers: l.peers as string[] })));
    assert.equal(fills.length, 2);
    const leader = nodes.find((n) => (status(n).peers?.counters.fromServerBytes ?? 0) > 0) as Node;
    assert.ok(
      fills.some((f) => !f.peers.includes(leader.address)),
      `with one upload slot per node, one node filled from the other follower (a tree): ${JSON.stringify(fills)} (leader ${leader.address})`,
    );
    assert.match(statusText(leader), /^peer fill: on as 127\.0\.0\.1:\d+, \d+ peers? seen; filled 0 B from peers and .* from the file server, served .* to peers/m);
  });
});

test("a peer killed (kill -9) in the middle of serving: the node goes on from the file server, its copy whole and verified, no partial left", async () => {
  await withRoot("fleet-kill", async (root, track) => {
    const { fs } = await fileServer(root, 4 * MB);
    writeKey(fs);
    const image = makeImage(root, path.join(fs.source, "alpha.sqfs"), { "data.bin": 24 * MB });
    const a = startNode(root, track, 0, PORT0 + 0, { pin: "alpha" });
    await waitUntil("node 0 copying alpha from the file server", () => statusSoon(a)?.datasets.find((d) => d.name === "alpha")?.copy?.from === "server", 30_000, 100);
    const b = startNode(root, track, 1, PORT0 + 1, { pin: "alpha" });
    const partial = path.join(b.cache, ".scratch_manager.alpha.sqfs.partial");
    await waitUntil("node 1 filling from node 0", () => existsSync(partial) && statSync(partial).size > 2 * MB && statusSoon(b)?.datasets.find((d) => d.name === "alpha")?.copy?.from === a.address, 30_000, 50);
    a.d.child.kill("SIGKILL");
    await waitUntil("alpha cached on node 1", () => cachedOn(b, "alpha"), 60_000, 200);
    assert.ok(sameBytes(path.join(b.cache, "alpha.sqfs"), image), "its copy is the image");
    assert.deepEqual(partials(b), []);
    assert.ok(b.d.find((l) => l.msg.startsWith("peer transfer broke off") && l.peer === a.address), "the break is logged, naming the peer");
    assert.equal(status(b).peers?.counters.fromServerBytes, statSync(image).size, "finished from the file server");
  });
});

test("a peer that sends wrong bytes (its SSD copy corrupted): the checksum does not match, the copy is discarded, that peer avoided, the image copied from the file server", async () => {
  await withRoot("fleet-corrupt", async (root, track) => {
    const { fs } = await fileServer(root, 32 * MB);
    writeKey(fs);
    const image = makeImage(root, path.join(fs.source, "alpha.sqfs"), { "data.bin": 8 * MB });
    const a = startNode(root, track, 0, PORT0 + 0, { pin: "alpha" });
    await waitUntil("alpha cached on node 0", () => cachedOn(a, "alpha"), 30_000, 100);
    // Bit rot on node 0's SSD, under its loop mount: the file it serves is no longer the image.
    // Bit rot changes no mtime: the copy still looks like the image's (size, mtime), only its bytes differ.
    const copy = path.join(a.cache, "alpha.sqfs");
    const was = statSync(copy);
    const fd = openSync(copy, "r+");
    writeSync(fd, Buffer.from("rot"), 0, 3, 4 * MB);
    closeSync(fd);
    utimesSync(copy, was.atime, was.mtime);
    const b = startNode(root, track, 1, PORT0 + 1, { pin: "alpha" });
    await waitUntil("alpha cached on node 1", () => cachedOn(b, "alpha"), 60_000, 200);
    assert.ok(sameBytes(path.join(b.cache, "alpha.sqfs"), image), "node 1 holds the image, not the corrupted copy");
    const warned = b.d.find((l) => l.level === "warn" && l.msg.startsWith("the copy from peers does not match"));
    assert.ok(warned, "the mismatch is said");
    assert.deepEqual(warned.peers, [a.address]);
    const c = status(b).peers?.counters;
    assert.equal(c?.checksumMismatches, 1);
    assert.equal(c?.fromServerBytes, statSync(image).size);
    assert.deepEqual(partials(b), []);
  });
});

test("records that must not be used: a stale one (a node gone), a dead node's, an older version's; the image comes from the file server", async () => {
  await withRoot("fleet-records", async (root, track) => {
    const { fs } = await fileServer(root, 32 * MB);
    const key = writeKey(fs);
    const image = makeImage(root, path.join(fs.source, "alpha.sqfs"), { "data.bin": 4 * MB });
    const st = statSync(image);
    const peers = path.join(fs.source, ".scratch_manager", "peers");
    mkdirSync(peers, { recursive: true });
    const sha = "ab".repeat(32);
    const record = (node: string, updatedAt: number, size: number, mtimeMs: number) =>
      signRecord(key, { v: 1, node, updatedAt, images: [{ file: "alpha.sqfs", size, mtimeMs, sha256: sha, state: "cached", progress: size, from: "server", since: 0 }] });
    const stale = `127.0.0.1:${PORT0 + 7}`;
    const dead = `127.0.0.1:${PORT0 + 8}`;
    const older = `127.0.0.1:${PORT0 + 9}`;
    writeFileSync(path.join(peers, "stale.json"), record(stale, Date.now() - 3600_000, st.size, st.mtimeMs));
    // Fresh for the test's minute (a record from beyond the clock's skew would be ignored as from the future).
    writeFileSync(path.join(peers, "dead.json"), record(dead, Date.now() + 30_000, st.size, st.mtimeMs));
    writeFileSync(path.join(peers, "older.json"), record(older, Date.now() + 30_000, st.size - 4096, st.mtimeMs - 86_400_000));
    writeFileSync(path.join(peers, "garbage.json"), "{not json\n");
    const b = startNode(root, track, 1, PORT0 + 1, { pin: "alpha" });
    await waitUntil("alpha cached", () => cachedOn(b, "alpha"), 60_000, 200);
    assert.ok(sameBytes(path.join(b.cache, "alpha.sqfs"), image));
    const asked = b.d.logs.filter((l) => typeof l.peer === "string").map((l) => l.peer);
    assert.deepEqual([...new Set(asked)], [dead], "only the live record of this version was tried (and it did not answer)");
    assert.equal(status(b).peers?.counters.fromServerBytes, st.size);
    // Its own record: one line of JSON, the image held, with the checksum computed on the way.
    const mine = readdirSync(peers).find((f) => f.startsWith("127.0.0.1_"));
    assert.ok(mine, `its record is in ${peers}: ${readdirSync(peers).join(", ")}`);
    await waitUntil("its record shows alpha cached", () => {
      const [r] = verifyRecordLines(readFileSync(path.join(peers, mine), "utf8"), [key], Date.now()).records as [PeerRecord | undefined];
      return r !== undefined && r.node === b.address && r.images.some((i) => i.file === "alpha.sqfs" && i.state === "cached" && /^[0-9a-f]{64}$/.test(i.sha256 ?? ""));
    }, 20_000, 200);
    // A clean stop takes the record away: no one should ask a node that is gone.
    await b.d.stop();
    assert.equal(existsSync(path.join(peers, mine)), false, "the record is removed on stop");
  });
});

test("the image replaced on the file server while peers copy it: no node keeps the old version, every node ends with the new one", async () => {
  await withRoot("fleet-replace", async (root, track) => {
    const { fs } = await fileServer(root, 4 * MB);
    writeKey(fs);
    const image = path.join(fs.source, "alpha.sqfs");
    makeImage(root, image, { "data.bin": 16 * MB, "id.txt": "v1" });
    const a = startNode(root, track, 0, PORT0 + 0, { pin: "alpha" });
    await waitUntil("node 0 copying alpha", () => statusSoon(a)?.datasets.find((d) => d.name === "alpha")?.state === "copying", 30_000, 100);
    const b = startNode(root, track, 1, PORT0 + 1, { pin: "alpha" });
    await waitUntil("node 1 copying alpha", () => statusSoon(b)?.datasets.find((d) => d.name === "alpha")?.state === "copying", 30_000, 100);
    const v2 = makeImage(root, path.join(root.work, "alpha-v2.sqfs"), { "data.bin": 8 * MB, "id.txt": "v2" });
    renameSync(v2, image);
    await waitUntil("v2 served from the cache on both nodes", () => [a, b].every((n) => cachedOn(n, "alpha") && readFileSync(path.join(n.mnt, "alpha", "id.txt"), "utf8") === "v2"), 90_000, 200);
    for (const n of [a, b]) {
      assert.ok(sameBytes(path.join(n.cache, "alpha.sqfs"), image), `node ${n.i} holds v2`);
      assert.deepEqual(partials(n), []);
    }
  });
});

test("the key: requests unsigned, replayed, for what a node does not hold, or reaching for a path are refused; a changed key is taken up; a bad key turns peer fill off with one warning", async () => {
  await withRoot("fleet-key", async (root, track) => {
    const { fs } = await fileServer(root, 64 * MB);
    const key = writeKey(fs);
    const image = makeImage(root, path.join(fs.source, "alpha.sqfs"), { "data.bin": 2 * MB });
    const st = statSync(image);
    const a = startNode(root, track, 0, PORT0 + 0, { pin: "alpha" });
    await waitUntil("alpha cached on node 0, its checksum known", () => cachedOn(a, "alpha") && statusSoon(a)?.peers?.enabled === true, 30_000, 100);
    const id = { file: "alpha.sqfs", size: st.size, mtimeMs: st.mtimeMs };
    const target = imageUrl(id);
    const signed = (k: Buffer, t = target) => ({ authorization: sign(k, { method: "GET", path: t, by: "127.0.0.1:1", to: a.address }, Date.now()) });
    const good = signed(key);
    await waitUntil("its record published (it serves alpha)", () => existsSync(path.join(fs.source, ".scratch_manager", "peers", `127.0.0.1_${PORT0}.json`)), 20_000, 100);
    const full = await get(a.address, target, good);
    assert.equal(full.status, 200);
    assert.ok(full.body.equals(readFileSync(image)), "the bytes served are the image's");
    assert.equal((await get(a.address, target, good)).status, 401, "the same signed request again (a replay) is refused");
    assert.equal((await get(a.address, target)).status, 401, "unsigned");
    assert.equal((await get(a.address, target, signed(randomBytes(32)))).status, 401, "signed with another key");
    assert.equal((await get(a.address, imageUrl({ ...id, size: id.size + 1 }), signed(key, imageUrl({ ...id, size: id.size + 1 })))).status, 404, "another version");
    for (const evil of ["/v1/images/..%2F..%2F..%2Fetc%2Fpasswd?size=1&mtime=0", "/v1/images/../../etc/passwd?size=1&mtime=0", "/etc/passwd"]) {
      assert.equal((await get(a.address, evil, signed(key, evil))).status, 404, `${evil}: no path from a request reaches the file system`);
    }
    // The administrator replaces the key: node 1 starts with the new one; node 0 takes it up when a request fails to verify.
    writeKey(fs);
    const b = startNode(root, track, 1, PORT0 + 1, { pin: "alpha" });
    await waitUntil("alpha cached on node 1", () => cachedOn(b, "alpha"), 60_000, 200);
    assert.ok(sameBytes(path.join(b.cache, "alpha.sqfs"), image));
    await a.d.waitForLog("node 0 read the new key", (l) => l.msg.startsWith("the fleet key changed; the previous one is accepted for 10 more minutes"), 20_000);
    // Rotation: the old key still opens node 0 for a while, so that nodes that have not read the new one yet still fill.
    assert.equal((await get(a.address, target, signed(key, target))).status, 200, "the previous key is accepted during its grace");

    // A key others can read turns peer fill off, said once; made private again and reloaded, it is back on.
    writeKey(fs, randomBytes(32), 0o644);
    // The FUSE file server lets the kernel keep attributes for a second (as NFS does for longer): the new mode is seen after that.
    await new Promise((r) => setTimeout(r, 1500));
    const c = startNode(root, track, 2, PORT0 + 2);
    const warned = await c.d.waitForLog("peer fill off", (l) => l.level === "warn" && l.msg.startsWith("peer fill off: the fleet key"), 20_000);
    assert.match(warned.msg, /readable by others \(mode 644\); chmod 600/);
    await new Promise((r) => setTimeout(r, 2000));
    assert.equal(c.d.logs.filter((l) => l.msg.startsWith("peer fill off")).length, 1, "said once");
    await assert.rejects(get(c.address, target, signed(key)), /ECONNREFUSED/, "no listener while the key is unusable");
    assert.equal(status(c).peers?.enabled, false);
    assert.match(statusText(c), /^peer fill: off \(the fleet key .* is readable by others/m);
    chmodSync(path.join(fs.source, ".scratch_manager", "peer.key"), 0o600);
    // Past the FUSE attribute cache again: the reload must see the new mode, or the next look is a minute away.
    await new Promise((r) => setTimeout(r, 1500));
    c.d.signal("SIGHUP");
    await waitUntil("peer fill on after the reload", () => statusSoon(c)?.peers?.enabled === true, 20_000, 200);
    // Too short a key, and none at all, are refused the same way.
    writeKey(fs, randomBytes(8));
    c.d.signal("SIGHUP");
    await c.d.waitForLog("short key refused", (l) => l.level === "warn" && /has 8 bytes, fewer than 32/.test(l.msg), 20_000);
  });
});

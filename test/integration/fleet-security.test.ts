/**
 * Issue 17: peer fill, attacked as a hostile user of a cluster would. Real
 * daemons, real HTTP, real images and mounts, and a real unprivileged user
 * (uid 65534, through setpriv) who can write datadir, or the records'
 * directory when the administrator lets "nobody" own it (root_squash
 * exports). Each test is one attack of the issue; each failed on the main
 * of before issue 17 (see each test's comment for why).
 *
 * Everything a test makes is under its test root; it kills only what it
 * started (daemons through the harness, its own HTTP servers and sockets).
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, symlinkSync, truncateSync, writeFileSync } from "node:fs";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import net from "node:net";
import path from "node:path";
import { test } from "node:test";
import { sign } from "../../src/fleet/auth.js";
import { signRecord, verifyRecordLines, type PeerRecord } from "../../src/fleet/records.js";
import { imageUrl } from "../../src/fleet/server.js";
import type { StatusReport } from "../../src/report/status.js";
import { Daemon, FaultFs, makeImage, waitUntil, withRoot, type DaemonOptions, type LogLine, type TestRoot } from "./harness.js";
import { bytesServed, cachedOn, get, sameBytes, startNode as startFleetNode, status, statusSoon, statusText, type Node } from "./fleet-nodes.js";

const MB = 1024 * 1024;
/** Ports of this run: a random block of ten, below fleet.test's (20,000-39,999) and below the ephemeral range. */
const PORT0 = 10_000 + Math.floor(Math.random() * 900) * 10;
/** The unprivileged user: nobody. */
const NOBODY = 65534;

// ---------------------------------------------------------------- helpers (the nodes are fleet-nodes.ts's, with metrics)

/** A node as fleet-nodes.ts starts it, with a metrics endpoint of its own. */
function startNode(root: TestRoot, track: (d: Daemon) => Daemon, i: number, extra: Record<string, string | number> = {}, options: Omit<DaemonOptions, "args" | "config"> = {}): Node {
  return startFleetNode(root, track, i, PORT0 + i, { metrics_listen: "127.0.0.1:0", ...extra }, options);
}

/** Let nobody reach the test root's directories (mkdtemp makes it 0700): the user must be able to get at datadir. */
function openUp(root: TestRoot): void {
  chmodSync(root.root, 0o755);
  chmodSync(root.data, 0o755);
}

/** The fleet's key, as the administrator makes it: 32 random bytes, mode 600, in <datadir>/.scratch_manager/ (root's, 0755). */
function writeKey(datadir: string, bytes = randomBytes(32)): Buffer {
  const dir = path.join(datadir, ".scratch_manager");
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  chmodSync(dir, 0o755);
  const file = path.join(dir, "peer.key");
  writeFileSync(file, bytes, { mode: 0o600 });
  chmodSync(file, 0o600);
  return bytes;
}

/** The default records' directory, made by root (0755), or given to nobody (the root_squash layout, peer_dir_owner = nobody). */
function recordsDir(datadir: string, owner: "root" | "nobody" = "root"): string {
  const dir = path.join(datadir, ".scratch_manager", "peers");
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  chmodSync(dir, 0o755);
  if (owner === "nobody") chownSync(dir, NOBODY, NOBODY);
  return dir;
}

/** A shell script run as nobody (uid and gid 65534, no groups); its stdout. */
function asNobody(script: string, args: string[] = [], input?: string): string {
  const r = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "--", "sh", "-c", script, "sh", ...args], { encoding: "utf8", input, timeout: 30_000 });
  assert.equal(r.status, 0, `as nobody: ${script}: ${r.stderr}`);
  return r.stdout;
}

/** The status file itself, as written by the last tick (no CLI in between: for sampling its age often). */
function statusFile(n: Node): StatusReport | undefined {
  try {
    return JSON.parse(readFileSync(path.join(n.run, "status.json"), "utf8")) as StatusReport;
  } catch {
    return undefined;
  }
}

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * One GET, for its status: the body read to the end (then the server's slot
 * is free when this resolves), or with `hangUp` the connection closed as
 * soon as the headers came (a client going away).
 */
function statusOf(address: string, target: string, headers: Record<string, string>, hangUp = false): Promise<number> {
  const [host, port] = address.split(":") as [string, string];
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port: Number(port), path: target, headers, agent: false }, (res) => {
      if (hangUp) {
        resolve(res.statusCode ?? 0);
        res.destroy();
        req.destroy();
        return;
      }
      res.on("data", () => undefined);
      res.on("end", () => resolve(res.statusCode ?? 0));
      res.on("error", reject);
    });
    req.on("error", reject);
  });
}

/** As waitUntil, for an async probe. */
async function eventually<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 20_000, everyMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** The node's /metrics (metrics_listen = 127.0.0.1:0: the port from its log). */
async function metricsText(n: Node): Promise<string> {
  const serving = await n.d.waitForLog("serving metrics", (l) => l.msg === "serving metrics");
  return (await fetch(`http://127.0.0.1:${String(serving.port)}/metrics`)).text();
}

/** One sample's value in the Prometheus text format: name and every label given. */
function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = new Map<string, string>();
    for (const [, k, v] of (m[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) got.set(k as string, v as string);
    if (Object.entries(labels).every(([k, v]) => got.get(k) === v)) return Number(m[3]);
  }
  return undefined;
}

const IGNORED = "scratch_manager_peer_records_ignored_total";

/** An HTTP server of the test's own on 127.0.0.1: it records every request and answers with `handler`. */
async function listener(port: number, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ address: string; requests: { url: string; headers: IncomingMessage["headers"] }[]; close: () => Promise<void> }> {
  const requests: { url: string; headers: IncomingMessage["headers"] }[] = [];
  const server = http.createServer((req, res) => {
    requests.push({ url: req.url ?? "", headers: req.headers });
    handler(req, res);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve());
  });
  return {
    address: `127.0.0.1:${port}`,
    requests,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The warning (or error) lines a node logged more than once, with their count. */
function repeatedWarnings(n: Node): { msg: string; count: number }[] {
  const counts = new Map<string, number>();
  for (const l of n.d.logs) if (l.level === "warn" || l.level === "error") counts.set(l.msg, (counts.get(l.msg) ?? 0) + 1);
  return [...counts].filter(([, c]) => c > 1).map(([msg, count]) => ({ msg, count }));
}

/** The signed records a directory holds, checked with the key. */
function signedRecordsIn(dir: string, key: Buffer): PeerRecord[] {
  const text = readdirSync(dir)
    .filter((f) => f.endsWith(".json") && lstatSync(path.join(dir, f)).isFile())
    .map((f) => readFileSync(path.join(dir, f), "utf8"))
    .join("");
  return verifyRecordLines(text, [key], Date.now()).records;
}

/** An image's identity as records name it. */
function identityOf(file: string): { file: string; size: number; mtimeMs: number } {
  const st = statSync(file);
  return { file: path.basename(file), size: st.size, mtimeMs: st.mtimeMs };
}

// ---------------------------------------------------------------- (a) forged, unsigned record; a lying server

/*
 * Before issue 17, a record was plain JSON and believed: the node asked the
 * lying server, got the other image with a matching (unsigned) trailer, and
 * mounted it ("filled from peers, checksum verified"). Here: no request may
 * reach it, and the record is counted once as unsigned.
 */
test("a forged, unsigned record naming a server of the user's that sends another image of the same size: nothing is asked of it, the image comes from the file server, the record counted once as unsigned", async () => {
  await withRoot("fsec-unsigned", async (root, track) => {
    openUp(root);
    writeKey(root.data);
    const image = makeImage(root, path.join(root.data, "alpha.sqfs"), { "data.bin": 8 * MB, "id.txt": "alpha" });
    const evil = makeImage(root, path.join(root.work, "evil.sqfs"), { "data.bin": 8 * MB, "id.txt": "evil!" });
    const id = identityOf(image);
    // The same size as the real image (squashfs ignores what follows its last byte).
    if (statSync(evil).size < id.size) truncateSync(evil, id.size);
    assert.equal(statSync(evil).size, id.size, "the other image has the real one's size");
    const evilBytes = readFileSync(evil);
    const liar = await listener(PORT0 + 7, (_req, res) => {
      res.writeHead(200, { "content-type": "application/octet-stream", "x-image-size": String(id.size), trailer: "x-image-sha256, x-image-sha256-sig" });
      res.write(evilBytes);
      res.addTrailers({ "x-image-sha256": sha256(evilBytes), "x-image-sha256-sig": "0".repeat(64) });
      res.end();
    });
    try {
      // root_squash layout: nobody owns the records' directory, and writes the forged record there itself.
      const peers = recordsDir(root.data, "nobody");
      const forged = `${JSON.stringify({ v: 1, node: liar.address, updatedAt: Date.now(), images: [{ ...id, sha256: sha256(evilBytes), state: "cached", progress: id.size, from: "server", since: 0 }] })}\n`;
      asNobody('cat > "$1"', [path.join(peers, `127.0.0.1_${PORT0 + 7}.json`)], forged);
      const n = startNode(root, track, 0, { pin: "alpha", peer_dir_owner: "nobody" });
      await waitUntil("alpha cached", () => cachedOn(n, "alpha"), 60_000, 200);
      assert.deepEqual(liar.requests, [], "no request ever reached the server the forged record names");
      assert.ok(sameBytes(path.join(n.cache, "alpha.sqfs"), image), "the cached copy is the real image");
      assert.equal(readFileSync(path.join(n.mnt, "alpha", "id.txt"), "utf8"), "alpha", "the real image's files are mounted");
      const c = status(n).peers?.counters;
      assert.equal(c?.fromServerBytes, id.size, "copied from the file server");
      assert.equal(c?.fromPeersBytes, 0);
      await eventually("the unsigned record counted", async () => (metricValue(await metricsText(n), IGNORED, { reason: "unsigned" }) ?? 0) >= 1);
      // Read several times (before and after the election): counted once.
      await sleep(2000);
      assert.equal(metricValue(await metricsText(n), IGNORED, { reason: "unsigned" }), 1, "counted once");
      assert.ok(!n.d.logs.some((l) => l.msg === "filled from peers, checksum verified"), "nothing filled from peers");
    } finally {
      await liar.close();
    }
  });
});

// ---------------------------------------------------------------- (b) planted symlinks where the record is written

/*
 * Before issue 17, the record was written by `cat > "$1/.$2.tmp" && mv`:
 * root followed the planted .<name>.tmp symlink and overwrote the file it
 * points at. Here the root-owned file is unchanged and the record is a
 * regular file, signed, written by root, every time.
 */
test("peer_dir owned by nobody, who plants symlinks at every name the record could be written through: the root-owned file they point at is unchanged, the record is written properly", async () => {
  await withRoot("fsec-symlinks", async (root, track) => {
    openUp(root);
    const key = writeKey(root.data);
    makeImage(root, path.join(root.data, "alpha.sqfs"), { "data.bin": 4 * MB });
    const peers = recordsDir(root.data, "nobody");
    const victim = path.join(root.root, "victim.conf");
    writeFileSync(victim, "root's own file: not to be written by the daemon\n", { mode: 0o644 });
    const before = statSync(victim);
    const victimBytes = readFileSync(victim);
    const name = `127.0.0.1_${PORT0}.json`;
    const plants = [name, `.${name}.tmp`, `.${name}.0.tmp`, `.${name}.1.tmp`, `.${name}.tmp.tmp`, `.${name}..tmp`, `.${name}.new.tmp`, `${name}.tmp`];
    asNobody('cd "$1" && v="$2" && shift 2 && for n; do ln -s -- "$v" "$n" || exit 1; done', [peers, victim, ...plants]);
    const unchanged = (when: string) => {
      const now = statSync(victim);
      assert.ok(readFileSync(victim).equals(victimBytes), `${when}: the file the symlinks point at has its content`);
      assert.equal(now.ino, before.ino, `${when}: the same file`);
      assert.equal(now.mtimeMs, before.mtimeMs, `${when}: not written`);
      assert.equal(now.uid, 0);
    };
    const recordIsWritten = (want: (r: PeerRecord) => boolean) => {
      const file = path.join(peers, name);
      if (!existsSync(file) || !lstatSync(file).isFile()) return false;
      const r = verifyRecordLines(readFileSync(file, "utf8"), [key], Date.now()).records;
      return r.length === 1 && want(r[0] as PeerRecord);
    };
    const n = startNode(root, track, 0, { pin: "alpha", peer_dir_owner: "nobody" });
    const holdsAlpha = (r: PeerRecord) => r.node === n.address && r.images.some((i) => i.file === "alpha.sqfs" && i.state === "cached" && /^[0-9a-f]{64}$/.test(i.sha256 ?? ""));
    await waitUntil("alpha cached", () => cachedOn(n, "alpha"), 60_000, 200);
    // The record was written when the copy started and when it ended.
    await sleep(2000);
    unchanged("once alpha is cached");
    await waitUntil("the record, signed, in place of the symlink, saying alpha is held", () => recordIsWritten(holdsAlpha), 30_000, 200);
    unchanged("after the first records");
    const st = lstatSync(path.join(peers, name));
    assert.equal(st.uid, 0, "the record is root's");
    assert.equal(st.mode & 0o022, 0, "and writable by no one else");
    for (const f of readdirSync(peers)) {
      const l = lstatSync(path.join(peers, f));
      if (f === name) continue;
      assert.ok(l.isSymbolicLink(), `${f}: no file left but the record (a temporary one would be a regular file)`);
      assert.equal(readlinkSync(path.join(peers, f)), victim, `${f}: the planted symlink, as planted`);
    }
    // The user plants the record's name again; the next publication (every 15 s at most) writes a record there, not through it.
    asNobody('ln -sfn -- "$2" "$1"', [path.join(peers, name), victim]);
    assert.ok(lstatSync(path.join(peers, name)).isSymbolicLink());
    await waitUntil("the record written again over the planted symlink", () => recordIsWritten(holdsAlpha), 40_000, 200);
    unchanged("after the record was written over a planted symlink");
  });
});

// ---------------------------------------------------------------- (c) the user swaps .scratch_manager, or the key is a symlink

/*
 * Before issue 17, the key was checked with `stat -L` and read with `head`,
 * both following symlinks, and no directory on the way was checked: each of
 * these layouts turned peer fill on. Here it stays off, with one warning
 * naming the path, and nothing is created through the user's directory.
 */
async function keyRefused(root: TestRoot, track: (d: Daemon) => Daemon, wrongPath: string, extraCheck?: () => void): Promise<void> {
  const n = startNode(root, track, 0);
  const warned = await n.d.waitForLog("peer fill off", (l) => l.level === "warn" && l.msg.startsWith("peer fill off"), 20_000);
  assert.ok(warned.msg.includes(wrongPath), `the warning names ${wrongPath}: ${warned.msg}`);
  await sleep(3000);
  // A reload reads the key and checks the directories again: still off, not said again.
  n.d.signal("SIGHUP");
  await sleep(3000);
  const offs = n.d.logs.filter((l: LogLine) => l.msg.startsWith("peer fill off"));
  assert.equal(offs.length, 1, `said once: ${offs.map((l) => l.msg).join(" | ")}`);
  const s = status(n);
  assert.equal(s.peers?.enabled, false);
  assert.ok((s.peers?.problem ?? "").includes(wrongPath), `status says why: ${s.peers?.problem}`);
  assert.match(statusText(n), /^peer fill: off \(/m);
  assert.equal(metricValue(await metricsText(n), "scratch_manager_peer_fill_enabled"), 0);
  const target = imageUrl({ file: "alpha.sqfs", size: 1, mtimeMs: 0 });
  await assert.rejects(get(n.address, target), /ECONNREFUSED/, "no listener");
  extraCheck?.();
}

test("datadir 0777 (not sticky): the user renames .scratch_manager away and makes a directory of its own there, with peer.key a symlink to the real key: peer fill off, one warning naming the path", async () => {
  await withRoot("fsec-swapdir", async (root, track) => {
    openUp(root);
    chmodSync(root.data, 0o777);
    writeKey(root.data);
    const fleetDir = path.join(root.data, ".scratch_manager");
    asNobody('cd "$1" && mv .scratch_manager .real && mkdir .scratch_manager && ln -s ../.real/peer.key .scratch_manager/peer.key', [root.data]);
    assert.equal(lstatSync(fleetDir).uid, NOBODY, "the user's directory is in place");
    await keyRefused(root, track, fleetDir, () => {
      assert.equal(existsSync(path.join(fleetDir, "peers")), false, "no records' directory made in the user's directory");
    });
  });
});

test("datadir 0777 (not sticky): the user renames .scratch_manager away and puts a symlink to it in its place: peer fill off, one warning naming the path", async () => {
  await withRoot("fsec-swaplink", async (root, track) => {
    openUp(root);
    chmodSync(root.data, 0o777);
    writeKey(root.data);
    const fleetDir = path.join(root.data, ".scratch_manager");
    asNobody('cd "$1" && mv .scratch_manager .real && ln -s .real .scratch_manager', [root.data]);
    assert.ok(lstatSync(fleetDir).isSymbolicLink());
    await keyRefused(root, track, fleetDir, () => {
      assert.equal(existsSync(path.join(root.data, ".real", "peers")), false, "nothing made through the symlink");
    });
  });
});

test("peer.key a symlink to a good key (root's, 0600) in a good directory: refused all the same (one open that does not follow links), one warning naming it", async () => {
  await withRoot("fsec-keylink", async (root, track) => {
    openUp(root);
    writeKey(root.data);
    const keys = path.join(root.root, "keys");
    mkdirSync(keys, { mode: 0o700 });
    const real = path.join(keys, "real.key");
    writeFileSync(real, randomBytes(32), { mode: 0o600 });
    const file = path.join(root.data, ".scratch_manager", "peer.key");
    execFileSync("rm", ["-f", "--", file]);
    symlinkSync(real, file);
    await keyRefused(root, track, file);
  });
});

// ---------------------------------------------------------------- (d) 10,000 forged records

/*
 * Before issue 17, 10,000 plain-JSON records copying from one another made
 * each source choice rebuild a map of every record per candidate: the event
 * loop blocked for tens of seconds, the status file went stale. Here the
 * status stays fresh, ticks stay short, and the copy comes from the file
 * server; the records are counted, each once, as unsigned.
 */
test("10,000 forged records in the records' directory: the status file stays fresh, ticks stay under a second, the pinned image's copy starts and finishes from the file server", async () => {
  await withRoot("fsec-flood", async (root, track) => {
    writeKey(root.data);
    const image = makeImage(root, path.join(root.data, "alpha.sqfs"), { "data.bin": 8 * MB });
    const id = identityOf(image);
    const peers = recordsDir(root.data);
    const now = Date.now();
    const node = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}:7823`;
    let bytes = 0;
    for (let i = 1; i <= 10_000; i++) {
      const line = `${JSON.stringify({ v: 1, node: node(i), updatedAt: now, images: [{ ...id, state: "copying", progress: i, from: i === 1 ? "server" : node(i - 1), since: now - i }] })}\n`;
      bytes += line.length;
      writeFileSync(path.join(peers, `${node(i).replace(/[^A-Za-z0-9._-]/g, "_")}.json`), line);
    }
    assert.ok(bytes > 1.5 * MB, `${bytes} bytes of forged records`);
    // A slow copy (2 MB/s): its start and its progress are seen in status.
    const n = startNode(root, track, 0, { pin: "alpha" }, { copyKBps: 2048 });
    let maxAge = 0;
    let maxTick = 0;
    let samples = 0;
    let sawFromServer = false;
    const deadline = Date.now() + 90_000;
    let cachedAt: number | undefined;
    while (Date.now() < deadline && (cachedAt === undefined || Date.now() - cachedAt < 3000)) {
      const s = statusFile(n);
      if (s) {
        samples++;
        maxAge = Math.max(maxAge, Date.now() - s.writtenAt);
        maxTick = Math.max(maxTick, s.tick.ms);
        if (s.datasets.find((d) => d.name === "alpha")?.copy?.from === "server") sawFromServer = true;
      }
      if (cachedAt === undefined && cachedOn(n, "alpha")) cachedAt = Date.now();
      await sleep(200);
    }
    assert.ok(cachedAt !== undefined, "alpha cached");
    assert.ok(samples > 20, `${samples} samples of the status`);
    assert.ok(maxAge <= 2000, `the status file was at most ${maxAge} ms old when read (interval 0.5 s: at most a couple of intervals)`);
    assert.ok(maxTick < 1000, `the longest tick took ${maxTick} ms`);
    assert.ok(sawFromServer, "the copy was seen running from the file server");
    assert.ok(sameBytes(path.join(n.cache, "alpha.sqfs"), image));
    assert.equal(status(n).peers?.counters.fromServerBytes, id.size, "finished from the file server");
    assert.equal(metricValue(await metricsText(n), IGNORED, { reason: "unsigned" }), 10_000, "each forged record counted once");
  });
});

/*
 * The bound on a whole read of the records' directory (issue 17, "Bounded
 * everywhere"): more than RECORDS_MAX_TOTAL_BYTES is cut, logged once and
 * counted; the records that were read still count, and reading records is
 * not a failure. (Before issue 17 there was no bound at all.)
 */
test("a records' directory stuffed past its bound (17 forged files of almost 4 MiB, 68 MiB in all): the read is cut and said once, reading records does not fail, the copy goes on from the file server", async () => {
  await withRoot("fsec-stuffed", async (root, track) => {
    writeKey(root.data);
    const image = makeImage(root, path.join(root.data, "alpha.sqfs"), { "data.bin": 4 * MB });
    const id = identityOf(image);
    const peers = recordsDir(root.data);
    // Each file under the 4 MiB a record may have; JSON, as a forged record is, quotes and all.
    const entry = `{"file":"alpha.sqfs","size":${id.size},"mtimeMs":${id.mtimeMs},"state":"copying","progress":0,"from":"server","since":0},`;
    for (let i = 1; i <= 17; i++) {
      const head = `{"v":1,"node":"10.9.0.${i}:7823","updatedAt":${Date.now()},"images":[`;
      const body = entry.repeat(Math.floor((4 * MB - 4096) / entry.length));
      writeFileSync(path.join(peers, `10.9.0.${i}_7823.json`), `${head}${body.slice(0, -1)}]}\n`);
    }
    // Time enough to read 48 MiB: only the bound is under test, not the timeout.
    const n = startNode(root, track, 0, { pin: "alpha", scan_timeout: 30 });
    await waitUntil("alpha cached", () => cachedOn(n, "alpha"), 90_000, 200);
    assert.equal(status(n).peers?.counters.fromServerBytes, id.size, "copied from the file server");
    await sleep(2000);
    const failed = n.d.logs.filter((l) => l.level === "warn" && /cannot read the peers' records/.test(l.msg));
    assert.deepEqual(failed.map((l) => l.msg), [], "reading the records never failed");
    const s = status(n);
    assert.equal(s.peers?.recordsProblem, undefined, `reading the records is not failing: ${String(s.peers?.recordsProblem)}`);
    const text = await metricsText(n);
    assert.equal(metricValue(text, "scratch_manager_peer_records_failing"), 0);
    const ignored = ["unsigned", "too_large", "malformed"].reduce((sum, reason) => sum + (metricValue(text, IGNORED, { reason }) ?? 0), 0);
    // 48 MiB read (12 files), the rest cut: 12 ignored as unsigned, and the cut counted once.
    assert.ok(ignored >= 13, `the forged files read were ignored, and the cut counted: ${ignored}`);
    assert.ok(n.d.logs.some((l) => l.level === "warn" && /MiB|cut|unread/i.test(l.msg)), "the cut is said");
    assert.deepEqual(repeatedWarnings(n), [], "and said once");
  });
});

// ---------------------------------------------------------------- (e) a request captured for one node, replayed to another

/*
 * Before issue 17, the signature did not name the node a request was for:
 * the captured request, replayed to another node, returned the whole image.
 */
test("a signed request captured on its way to node A, replayed to node B: 401, and the body says only unauthorized", async () => {
  await withRoot("fsec-replay", async (root, track) => {
    const key = writeKey(root.data);
    const image = makeImage(root, path.join(root.data, "alpha.sqfs"), { "data.bin": 4 * MB });
    const id = identityOf(image);
    const target = imageUrl(id);
    const by = `127.0.0.1:${PORT0 + 9}`;
    const a = startNode(root, track, 0, { pin: "alpha" });
    await waitUntil("alpha cached on A", () => cachedOn(a, "alpha"), 60_000, 200);
    const b = startNode(root, track, 1, { pin: "alpha" });
    await waitUntil("alpha cached on B", () => cachedOn(b, "alpha"), 60_000, 200);
    const forNode = (n: Node) => ({ authorization: sign(key, { method: "GET", path: target, by, to: n.address }, Date.now()) });
    // Both serve alpha to a request signed for them.
    for (const n of [a, b]) await eventually(`node ${n.i} serves alpha`, async () => (await get(n.address, target, forNode(n))).status === 200, 30_000, 500);
    const captured = forNode(a);
    const atA = await get(a.address, target, captured);
    assert.equal(atA.status, 200, "the captured request is a good one, where it was going");
    assert.ok(atA.body.equals(readFileSync(image)));
    const refusedBefore = status(b).peers?.counters.refusedAuth ?? 0;
    const replayed = await get(b.address, target, captured);
    assert.equal(replayed.status, 401, "replayed to B: refused");
    assert.equal(replayed.body.toString("utf8").trim(), "unauthorized", "a 401 says only that");
    const unused = await get(b.address, target, forNode(a));
    assert.equal(unused.status, 401, "a request signed for A and never sent there: refused by B too (not a nonce seen before)");
    assert.equal((await get(b.address, target, forNode(b))).status, 200, "the same request signed for B is served");
    await waitUntil("B counted the refusals", () => (statusSoon(b)?.peers?.counters.refusedAuth ?? 0) >= refusedBefore + 2, 10_000, 200);
  });
});

// ---------------------------------------------------------------- (f) a client that stops reading

/*
 * Before issue 17, a response waited for 'drain' with no deadline: one
 * client that never read held the only upload slot for as long as it liked
 * (503 to everyone else, forever).
 */
test("a client that opens a transfer and stops reading: with peer_uploads = 1, its slot is freed within the drain deadline, and serving drops to 0", async () => {
  await withRoot("fsec-slowloris", async (root, track) => {
    const key = writeKey(root.data);
    // Much more than the socket buffers hold, so that the server really waits on the client.
    const image = makeImage(root, path.join(root.data, "alpha.sqfs"), { "data.bin": 64 * MB });
    const target = imageUrl(identityOf(image));
    const a = startNode(root, track, 0, { pin: "alpha", peer_uploads: 1 });
    await waitUntil("alpha cached", () => cachedOn(a, "alpha"), 60_000, 200);
    const signed = () => ({ authorization: sign(key, { method: "GET", path: target, by: `127.0.0.1:${PORT0 + 9}`, to: a.address }, Date.now()) });
    await eventually("alpha served", async () => (await statusOf(a.address, target, signed())) === 200, 30_000, 500);
    await waitUntil("nothing served", () => statusSoon(a)?.peers?.serving === 0, 10_000, 200);
    // The client: a signed request, then never a byte read.
    const slow = net.connect({ host: "127.0.0.1", port: PORT0 });
    slow.on("error", () => undefined);
    try {
      await new Promise<void>((resolve, reject) => {
        slow.once("connect", resolve);
        slow.once("error", reject);
      });
      slow.write(`GET ${target} HTTP/1.1\r\nHost: ${a.address}\r\nAuthorization: ${signed().authorization}\r\n\r\n`);
      slow.pause();
      const startedAt = Date.now();
      await waitUntil("the slow client holds the slot", () => statusFile(a)?.peers?.serving === 1, 10_000, 100);
      assert.equal(await statusOf(a.address, target, signed()), 503, "while it holds the only slot, another request is told busy");
      const freedAt = await eventually(
        "another signed request served",
        async () => ((await statusOf(a.address, target, signed())) === 200 ? Date.now() : undefined),
        45_000,
        1000,
      );
      assert.ok(freedAt - startedAt <= 35_000, `the slot was freed ${freedAt - startedAt} ms after the client stopped reading`);
      await waitUntil("serving back to 0", () => statusFile(a)?.peers?.serving === 0, 10_000, 200);
    } finally {
      slow.destroy();
    }
  });
});

/*
 * Not an attack of the issue, but the same slot: a client that goes away
 * (a peer killed, a fetch cancelled) must free it at once, not hold it
 * until the drain deadline. Before issue 17 such a slot could be held
 * forever (its 'close' came before the wait for 'drain' began).
 */
test("a client that hangs up right after the response's headers: with peer_uploads = 1, its slot is free again at once, not after the drain deadline", async () => {
  await withRoot("fsec-hangup", async (root, track) => {
    const key = writeKey(root.data);
    const image = makeImage(root, path.join(root.data, "alpha.sqfs"), { "data.bin": 64 * MB });
    const target = imageUrl(identityOf(image));
    const a = startNode(root, track, 0, { pin: "alpha", peer_uploads: 1 });
    await waitUntil("alpha cached", () => cachedOn(a, "alpha"), 60_000, 200);
    const signed = () => ({ authorization: sign(key, { method: "GET", path: target, by: `127.0.0.1:${PORT0 + 9}`, to: a.address }, Date.now()) });
    await eventually("alpha served", async () => (await statusOf(a.address, target, signed())) === 200, 30_000, 500);
    for (let round = 0; round < 5; round++) {
      // The status file is a tick old: the last hang-up's slot may still be in the middle of being freed.
      await eventually(`round ${round}: served, then the client hangs up`, async () => (await statusOf(a.address, target, signed(), true)) === 200, 5_000, 100);
      const hungUpAt = Date.now();
      await eventually(`round ${round}: the slot free again`, async () => (await statusOf(a.address, target, signed(), true)) === 200, 20_000, 100);
      // That last one hung up too: its slot must be free before the next round.
      await eventually(`round ${round}: nothing served`, async () => statusFile(a)?.peers?.serving === 0 || undefined, 20_000, 100);
      const heldMs = Date.now() - hungUpAt;
      assert.ok(heldMs < 5000, `round ${round}: the slot of a client that hung up was held ${heldMs} ms (the drain deadline is 15 s)`);
    }
  });
});

// ---------------------------------------------------------------- (g) a signed record dated in the future

/*
 * Before issue 17, a record dated in the future never went stale and was
 * believed. (Signed records did not exist either: there the control record
 * below is not understood, and no request reaches the control server.)
 * Here the future one is ignored (counted once as future) and no request
 * reaches the node it names, while a good signed record beside it is used.
 */
test("a correctly signed record dated an hour in the future: ignored (future), no request to the node it names; a good signed record beside it is used", async () => {
  await withRoot("fsec-future", async (root, track) => {
    const key = writeKey(root.data);
    const image = makeImage(root, path.join(root.data, "alpha.sqfs"), { "data.bin": 4 * MB, "id.txt": "alpha" });
    const id = identityOf(image);
    const sha = sha256(readFileSync(image));
    const future = await listener(PORT0 + 7, (_req, res) => {
      res.writeHead(503, { "retry-after": "1" });
      res.end();
    });
    // The control: a node with a good record that does not hold this version after all (404).
    const control = await listener(PORT0 + 8, (_req, res) => {
      res.writeHead(404);
      res.end("no\n");
    });
    try {
      const peers = recordsDir(root.data);
      const entry = { ...id, sha256: sha, state: "cached" as const, progress: id.size, from: "server", since: 0 };
      writeFileSync(path.join(peers, `127.0.0.1_${PORT0 + 7}.json`), signRecord(key, { v: 1, node: future.address, updatedAt: Date.now() + 3600_000, images: [entry] }));
      writeFileSync(path.join(peers, `127.0.0.1_${PORT0 + 8}.json`), signRecord(key, { v: 1, node: control.address, updatedAt: Date.now(), images: [entry] }));
      const n = startNode(root, track, 0, { pin: "alpha" });
      await waitUntil("alpha cached", () => cachedOn(n, "alpha"), 60_000, 200);
      assert.deepEqual(future.requests, [], "no request to the node the future record names");
      assert.ok(control.requests.length >= 1, "the good signed record was believed: its node was asked");
      // The request to the control node: signed with the fleet key, by this node, for the control node.
      const r = control.requests[0] as { url: string; headers: IncomingMessage["headers"] };
      const m = /^SM-HMAC t=(\d+),n=([0-9a-f]+),by=([^,]+),s=[0-9a-f]{64}$/.exec(String(r.headers.authorization));
      assert.ok(m, `a signed request: ${String(r.headers.authorization)}`);
      assert.equal(m[3], n.address, "it says who asks");
      const range = typeof r.headers.range === "string" ? r.headers.range : undefined;
      assert.equal(r.headers.authorization, sign(key, { method: "GET", path: r.url, range, by: n.address, to: control.address }, Number(m[1]), m[2]), "signed for the control node");
      assert.ok(sameBytes(path.join(n.cache, "alpha.sqfs"), image));
      assert.equal(status(n).peers?.counters.fromServerBytes, id.size, "copied from the file server");
      await eventually("the future record counted", async () => (metricValue(await metricsText(n), IGNORED, { reason: "future" }) ?? 0) >= 1);
      await sleep(2000);
      assert.equal(metricValue(await metricsText(n), IGNORED, { reason: "future" }), 1, "counted once");
    } finally {
      await future.close();
      await control.close();
    }
  });
});

// ---------------------------------------------------------------- (h) a read-only file server, records in peer_dir, the key in peer_key

/*
 * Before issue 17, with datadir read-only the record could not be written
 * ("cannot publish the peer record ... Read-only file system" at every
 * tick), and the key could only be in datadir: each node read the image
 * from the file server. Here the image leaves it about once and no warning
 * repeats.
 */
test("the file server read-only on the nodes, records in peer_dir, the key in peer_key: three nodes pinning one image take it from the file server about once; no warning repeats", async () => {
  await withRoot("fsec-readonly", async (root, track) => {
    const counts = path.join(root.root, "counts.json");
    const fs = await FaultFs.start(root, root.data, { counts, rate: 8 * MB, directIo: true });
    const image = makeImage(root, path.join(fs.source, "alpha.sqfs"), { "data.bin": 24 * MB, "id.txt": "alpha" });
    const size = statSync(image).size;
    // The nodes see the file server read-only: a read-only bind mount of it.
    const ro = path.join(root.root, "ro-data");
    mkdirSync(ro);
    execFileSync("mount", ["--bind", root.data, ro]);
    execFileSync("mount", ["-o", "remount,bind,ro", ro]);
    assert.throws(() => writeFileSync(path.join(ro, "probe"), "x"), /EROFS/, "the nodes' datadir is read-only");
    // The key on each node's local disk (one file here for all three), the records in a writable directory.
    const keyDir = path.join(root.root, "etc-scratch_manager");
    mkdirSync(keyDir, { mode: 0o755 });
    const keyFile = path.join(keyDir, "peer.key");
    const key = randomBytes(32);
    writeFileSync(keyFile, key, { mode: 0o600 });
    const peerDir = path.join(root.root, "peers");
    mkdirSync(peerDir, { mode: 0o755 });
    const before = bytesServed(counts);
    const nodes = [0, 1, 2].map((i) => startNode(root, track, i, { datadir: ro, pin: "alpha", peer_key: keyFile, peer_dir: peerDir }));
    await waitUntil("alpha cached on every node", () => nodes.every((n) => cachedOn(n, "alpha")), 90_000, 200);
    const served = bytesServed(counts) - before;
    assert.ok(served < 1.3 * size, `the file server sent ${(served / size).toFixed(2)}x the image (at most 1.3x)`);
    for (const n of nodes) {
      assert.ok(sameBytes(path.join(n.cache, "alpha.sqfs"), image), `node ${n.i}: its copy is the image`);
      assert.equal(readFileSync(path.join(n.mnt, "alpha", "id.txt"), "utf8"), "alpha");
    }
    const totals = nodes.map((n) => status(n).peers?.counters);
    assert.equal(totals.reduce((s, c) => s + (c?.fromServerBytes ?? 0), 0), size, "one node copied from the file server");
    assert.equal(totals.reduce((s, c) => s + (c?.fromPeersBytes ?? 0), 0), 2 * size, "two filled from peers");
    assert.deepEqual(signedRecordsIn(peerDir, key).map((r) => r.node).sort(), nodes.map((n) => n.address).sort(), "each node's record, signed, in peer_dir");
    // Long enough for a warning said at every tick to show (interval 0.5 s).
    await sleep(4000);
    for (const n of nodes) {
      assert.deepEqual(repeatedWarnings(n), [], `node ${n.i}: no warning more than once`);
      assert.equal(status(n).peers?.enabled, true, `node ${n.i}: peer fill on`);
      assert.equal(status(n).peers?.recordsProblem, undefined, `node ${n.i}: no records problem`);
    }
  });
});

// ---------------------------------------------------------------- two different signed checksums for one image

/*
 * A node that holds the key can lie (SECURITY.md, out of scope), but not
 * unseen: a second signed checksum for the same image identity is an alarm,
 * and neither is believed. Before issue 17 the first checksum found was used.
 */
test("two different signed checksums for one image (a node with the key lies): the alarm is raised, neither is used, the image comes from the file server", async () => {
  await withRoot("fsec-conflict", async (root, track) => {
    const key = writeKey(root.data);
    const image = makeImage(root, path.join(root.data, "alpha.sqfs"), { "data.bin": 4 * MB, "id.txt": "alpha" });
    const id = identityOf(image);
    const a = startNode(root, track, 0, { pin: "alpha" });
    await waitUntil("alpha cached on node 0, its record published with the checksum", () => cachedOn(a, "alpha") && signedRecordsIn(recordsDir(root.data), key).some((r) => r.node === a.address && r.images.some((i) => i.sha256 !== undefined)), 60_000, 200);
    // The liar: a signed record of a node (nothing listens there) that claims another checksum for the same version.
    const liar = `127.0.0.1:${PORT0 + 6}`;
    const lie = { ...id, sha256: "0".repeat(64), state: "cached" as const, progress: id.size, from: "server", since: 0 };
    writeFileSync(path.join(recordsDir(root.data), `127.0.0.1_${PORT0 + 6}.json`), signRecord(key, { v: 1, node: liar, updatedAt: Date.now(), images: [lie] }));
    const b = startNode(root, track, 1, { pin: "alpha" });
    await waitUntil("alpha cached on node 1", () => cachedOn(b, "alpha"), 60_000, 200);
    assert.ok(sameBytes(path.join(b.cache, "alpha.sqfs"), image), "node 1 holds the image");
    const alarm = b.d.find((l) => l.level === "error" && l.msg === "two different signed checksums for one image; neither is used");
    assert.ok(alarm, "the conflict is logged as an error");
    assert.deepEqual(Object.keys(alarm.checksums as Record<string, string[]>).sort(), [sha256(readFileSync(image)), lie.sha256].sort(), "naming both checksums");
    const c = status(b).peers?.counters;
    assert.equal(c?.checksumConflicts, 1);
    assert.equal(c?.fromServerBytes, id.size, "the image came from the file server");
    assert.equal(c?.fromPeersBytes, 0);
    assert.equal(metricValue(await metricsText(b), "scratch_manager_peer_checksum_conflicts_total"), 1);
  });
});

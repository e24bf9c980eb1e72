/**
 * Issue 20, item 4: datadir on a real network file system client that loses
 * its handles (sshfs against an sshd the test starts on 127.0.0.1). A
 * stalled server is reported within scan_timeout although every stat of
 * datadir is answered from the kernel's attribute cache; after the session
 * drops (sshfs reconnects) and after the client is killed and mounted
 * again, the slow layers left on dead handles are attached again, and a
 * file of an uncached dataset reads the right bytes from a fresh loop
 * device; no copy is made and the cached copy is not touched.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { CLI, Daemon, deviceReadBytes, loopsOnDevices, makeImage, stackAt, waitUntil, withRoot, type LogLine, type MountRow, type TestRoot } from "./harness.js";
import { SshFs } from "./sshfs.js";

const MB = 1024 * 1024;
const sha = (data: Buffer) => createHash("sha256").update(data).digest("hex");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The bound the documentation gives (docs/storage-failures.md): the suspect layers are read in the next probe round (every 5 s), then one tick. */
const REATTACH_BOUND_MS = 15_000;

/** Each dataset: a file per phase, never read before it (its bytes must come through the slow layer of that moment). */
const FILES = ["f0.bin", "f1.bin", "f2.bin", "f3.bin"];

function images(root: TestRoot, fs: SshFs): Map<string, Map<string, string>> {
  const sums = new Map<string, Map<string, string>>();
  for (const name of ["alpha", "beta", "gamma"]) {
    const files = Object.fromEntries(FILES.map((f) => [f, 1 * MB]));
    const dest = path.join(fs.source, `${name}.sqfs`);
    makeImage(root, dest, files);
    sums.set(name, new Map());
  }
  return sums;
}

/** Reads a file of the dataset never read before, through whatever is mounted now; its hash, and the bytes its bottom layer's device read meanwhile. */
function readThrough(root: TestRoot, name: string, file: string): { hash: string; deviceBytes: number; layer: MountRow } {
  const layer = stackAt(path.join(root.mnt, name))[0] as MountRow;
  const before = deviceReadBytes(layer.source);
  const data = readFileSync(path.join(root.mnt, name, file));
  return { hash: sha(data), deviceBytes: deviceReadBytes(layer.source) - before, layer };
}

test("datadir on sshfs: a stalled server is reported within scan_timeout; after a reconnect, and after the client is killed and mounted again, the dead slow layers are attached again and read the right bytes; nothing copied, the cached copy untouched", async () => {
  let ssh: SshFs | undefined;
  let devices = new Set<string>();
  try {
    await withRoot("sshfs", async (root, track) => {
      ssh = await SshFs.start(root, root.data);
      images(root, ssh);
      // The expected bytes, read on the server side.
      const expected = (name: string, file: string) => {
        const out = path.join(root.work, `check-${name}`);
        return sha(readFileSync(path.join(out, file)));
      };
      for (const name of ["alpha", "beta", "gamma"]) execFileSync("unsquashfs", ["-q", "-n", "-d", path.join(root.work, `check-${name}`), path.join((ssh as SshFs).source, `${name}.sqfs`)], { stdio: "pipe" });

      const scanTimeout = 3;
      const d = track(Daemon.start(root, { scan_timeout: scanTimeout, command_timeout: 5, pin: "alpha", capacity: "6MB" }));
      await waitUntil("alpha cached, beta and gamma mounted", () => stackAt(path.join(root.mnt, "alpha")).length === 2 && stackAt(path.join(root.mnt, "beta")).length === 1 && stackAt(path.join(root.mnt, "gamma")).length === 1, 40_000);
      const copy = statSync(path.join(root.cache, "alpha.sqfs"));
      const copiesStarted = () => d.logs.filter((l) => l.msg === "copy started").length;
      const copies = copiesStarted();
      const first = readThrough(root, "beta", "f0.bin");
      assert.equal(first.hash, expected("beta", "f0.bin"));

      // 1. The server stalls: reported within scan_timeout (and a tick), though a stat of datadir is answered from the attribute cache.
      await sleep(2000);
      const stalledAt = Date.now();
      const session = (ssh as SshFs).stall();
      const warned = await d.waitForLog("datadir not responding", (l) => l.level === "warn" && /datadir/.test(l.msg) && /respond|answer/i.test(l.msg), 20_000);
      const reportedMs = Date.now() - stalledAt;
      process.stderr.write(`stalled server reported in ${reportedMs} ms (scan_timeout ${scanTimeout} s)\n`);
      // Within a probe period (half scan_timeout here), scan_timeout, and a tick.
      assert.ok(reportedMs <= (scanTimeout * 1.5 + 2) * 1000, `a stalled server reported in ${reportedMs} ms, not within scan_timeout (${scanTimeout} s) and a tick: ${JSON.stringify(warned)}`);
      (ssh as SshFs).resume(session);
      await d.waitForLog("datadir available again", (l) => l.msg === "datadir available again", 20_000);

      // The probes read every slow layer meanwhile (rounds every 5 s): not counted as jobs' reads.
      const probed = JSON.parse(execFileSync(process.execPath, [CLI, "status", "--json", "--runtime-dir", path.join(root.root, "run")], { encoding: "utf8" })) as { datasets: { name: string; slowBytesRead: number }[] };
      assert.equal(probed.datasets.find((x) => x.name === "gamma")?.slowBytesRead, 0, "gamma, never read by a job, has no reads counted");

      // 2. The session drops; sshfs reconnects; the old handles are dead.
      const layersBefore = new Map(["alpha", "beta", "gamma"].map((n) => [n, stackAt(path.join(root.mnt, n)).map((m) => m.id)]));
      // Mount IDs and loop devices are reused at once: a layer attached again is told by the daemon's log, then checked by reading.
      const reattached = async (phase: string, since: number) => {
        for (const name of ["beta", "gamma"]) {
          await waitUntil(`${phase}: ${name}'s slow layer attached again`, () => {
            const lines = d.logs.slice(since).filter((l) => l.dataset === name);
            const off = lines.findIndex((l) => l.msg === "unmounted" && /dead file handle/.test(String(l.reason)));
            return off >= 0 && lines.slice(off).some((l) => l.msg === "mounted image") && stackAt(path.join(root.mnt, name)).length === 1;
          }, REATTACH_BOUND_MS + 20_000, 100);
        }
        return Date.now();
      };
      const dropLogs = d.logs.length;
      (ssh as SshFs).dropSession();
      const droppedAt = Date.now();
      const doneAt = await reattached("after the reconnect", dropLogs);
      process.stderr.write(`session dropped -> slow layers attached again in ${doneAt - droppedAt} ms\n`);
      assert.ok(doneAt - droppedAt < REATTACH_BOUND_MS, `attached again ${doneAt - droppedAt} ms after the session dropped`);
      const dead = (name: string) => d.logs.filter((l: LogLine) => l.dataset === name && l.msg.startsWith(`slow layer of ${name} is dead`));
      assert.equal(dead("beta").length, 1, "one warning per dataset");
      assert.match(String(dead("beta")[0]?.evidence), /Input\/output error|not connected/);
      for (const name of ["beta", "gamma"]) {
        const r = readThrough(root, name, "f1.bin");
        assert.equal(r.hash, expected(name, "f1.bin"), `${name} reads the right bytes after the reconnect`);
        assert.ok(r.deviceBytes >= MB, `${name}'s bytes came through its fresh loop device (${r.deviceBytes})`);
      }
      // The cached dataset: its stack as it was (the dead layer beneath the cache is left until the cache layer comes off).
      assert.deepEqual(stackAt(path.join(root.mnt, "alpha")).map((m) => m.id), layersBefore.get("alpha"));
      assert.equal(readThrough(root, "alpha", "f1.bin").hash, expected("alpha", "f1.bin"));
      const status = JSON.parse(execFileSync(process.execPath, [CLI, "status", "--json", "--runtime-dir", path.join(root.root, "run")], { encoding: "utf8" })) as { slowLayers?: { foundTotal: number }; datasets: { name: string; note?: string }[] };
      assert.ok((status.slowLayers?.foundTotal ?? 0) >= 2, `counted: ${JSON.stringify(status.slowLayers)}`);
      assert.match(status.datasets.find((x) => x.name === "alpha")?.note ?? "", /beneath the cache is dead/, JSON.stringify(status.datasets));

      // 3. The client dies (ENOTCONN), and is mounted again.
      const killLogs = d.logs.length;
      await (ssh as SshFs).killClient();
      await sleep(1500);
      await (ssh as SshFs).remount();
      const remountedAt = Date.now();
      const againAt = await reattached("after the client was mounted again", killLogs);
      process.stderr.write(`client mounted again -> slow layers attached again in ${againAt - remountedAt} ms\n`);
      assert.ok(againAt - remountedAt < REATTACH_BOUND_MS, `attached again ${againAt - remountedAt} ms after the remount`);
      for (const name of ["beta", "gamma"]) assert.equal(readThrough(root, name, "f2.bin").hash, expected(name, "f2.bin"), `${name} reads the right bytes after the remount`);

      // Nothing copied, the cached copy untouched, alpha still served by the cache.
      assert.equal(copiesStarted(), copies, "no copy made");
      const after = statSync(path.join(root.cache, "alpha.sqfs"));
      assert.deepEqual([after.ino, after.mtimeMs, after.size], [copy.ino, copy.mtimeMs, copy.size], "the cached copy untouched");
      assert.equal(stackAt(path.join(root.mnt, "alpha")).length, 2);
      assert.equal(readThrough(root, "alpha", "f3.bin").hash, expected("alpha", "f3.bin"));
      devices = new Set((ssh as SshFs).devices);
    });
  } finally {
    await ssh?.teardown();
  }
  assert.deepEqual(loopsOnDevices(devices), [], "no loop device left on the client's files");
  assert.deepEqual(ssh?.running ?? [], [], "no sshd or sshfs process of the test left");
});

/**
 * Issue 3, soak: images added, replaced, removed and read over hundreds of
 * ticks; the end state is exact. Issue 10: datadir is a FUSE file system
 * that hangs, then fails with EIO, for a while in the middle of it: nothing
 * is unmounted, deleted or copied meanwhile.
 */
import assert from "node:assert/strict";
import { copyFileSync, existsSync, readdirSync, readFileSync, renameSync, rmSync, utimesSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { backingFileOf, Daemon, FaultFs, loopsBackedUnder, makeImage, mountsUnder, stackAt, startReader, waitUntil, withRoot, type FaultMode } from "./harness.js";
import { prng } from "../unit/helpers.js";

const KB = 1024;
const NAMES = ["alpha", "beta", "gamma", "delta", "eps"];
const STEPS = 400;
/** Steps during which datadir does not answer, then fails every call: [first, last, mode]. */
const OUTAGES: [number, number, FaultMode][] = [
  [120, 165, "hang"],
  [250, 290, "eio"],
];

test("churn: several hundred ticks of adds, replaces, removes and reads end with exactly the mounts and cache files the final state calls for", async (t) => {
  await withRoot("soak", async (root, track) => {
    // Two versions of each image, built once; placing one is a copy and an atomic rename.
    const versions = new Map<string, string[]>();
    for (const name of NAMES) {
      versions.set(
        name,
        [1, 2].map((v) => makeImage(root, path.join(root.work, `${name}.v${v}.sqfs`), { "data.bin": (200 + 100 * v) * KB, "v.txt": `${name} v${v}` })),
      );
    }
    const rand = prng(42);
    const fs = await FaultFs.start(root, root.data);
    const d = track(Daemon.start(root, { capacity: "1MB", interval: 0.05, period: 1, scan_timeout: 1 }));
    const outages: { from: number; to: number; mode: FaultMode }[] = [];
    const readers = new Map<string, { stop: () => Promise<void> }>();
    let placed = 0;
    // Through the FUSE mount, as a client of the file server would (a hidden temporary name, then a rename):
    // libfuse keeps a replaced file that is still open under a hidden name, as NFS does (.nfsXXXX).
    const place = (name: string) => {
      const v = versions.get(name)?.[Math.floor(rand() * 2)] as string;
      const tmp = path.join(root.data, `.placing-${placed++}`);
      copyFileSync(v, tmp);
      const old = new Date(Date.now() - 3600_000 - placed * 1000);
      utimesSync(tmp, old, old);
      renameSync(tmp, path.join(root.data, `${name}.sqfs`));
    };
    const started = Date.now();
    for (let step = 0; step < STEPS; step++) {
      const outage = OUTAGES.find(([first, last]) => step >= first && step <= last);
      for (const [first, last, mode] of OUTAGES) {
        if (step === first) {
          outages.push({ from: Date.now(), to: Infinity, mode });
          await fs.set(mode);
        } else if (step === last + 1) {
          (outages.at(-1) as { to: number }).to = Date.now();
          await fs.set("ok");
        }
      }
      const name = NAMES[Math.floor(rand() * NAMES.length)] as string;
      const r = rand();
      // While the server is out, the churn pauses: any call on it (a client's, a reader's) would hang or fail.
      if (outage) {
        await new Promise((res) => setTimeout(res, 40));
        continue;
      }
      const present = existsSync(path.join(root.data, `${name}.sqfs`));
      if (!present || r < 0.3) place(name);
      else if (r < 0.45) rmSync(path.join(root.data, `${name}.sqfs`));
      else if (readers.has(name)) {
        await readers.get(name)?.stop();
        readers.delete(name);
      } else readers.set(name, startReader(path.join(root.mnt, name)));
      await new Promise((res) => setTimeout(res, 40));
    }
    for (const o of outages) if (o.to === Infinity) o.to = Date.now();
    await fs.set("ok");
    await Promise.all([...readers.values()].map((r) => r.stop()));
    const churnMs = Date.now() - started;
    const churnTicks = d.logs.filter((l) => l.msg === "tick").length;
    const rssKiB = Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${d.child.pid}/status`, "utf8"))?.[1]);

    // While datadir could not be read (from half a second in, ticks already under way aside), nothing was undone or copied.
    for (const o of outages) {
      const during = d.logs.filter((l) => {
        const t = Date.parse(String(l.time));
        return t > o.from + 500 && t < o.to && ["unmounted", "deleted cache file", "copy started", "mounted image"].includes(l.msg);
      });
      assert.deepEqual(during.map((l) => `${l.msg} ${String(l.dataset)}`), [], `nothing done during the ${o.mode} outage`);
      assert.ok(d.logs.some((l) => l.msg.startsWith("datadir unavailable") && Date.parse(String(l.time)) > o.from), `the ${o.mode} outage was seen`);
    }

    const images = readdirSync(root.data).filter((f) => !f.startsWith(".")).sort();
    const wanted = images.map((f) => f.replace(/\..*$/, ""));
    let mismatch = "";
    const differs = (what: string, actual: unknown, expected: unknown) => {
      mismatch = `${what}: ${JSON.stringify(actual)}, expected ${JSON.stringify(expected)}`;
      return false;
    };
    const settled = () => {
      const mountNames = readdirSync(root.mnt).sort();
      if (JSON.stringify(mountNames) !== JSON.stringify(wanted)) return differs("mount points", mountNames, wanted);
      const cacheFiles = readdirSync(root.cache);
      if (cacheFiles.some((f) => f.endsWith(".partial") || !images.includes(f))) return differs("cache files", cacheFiles, images);
      for (const name of wanted) {
        const layers = stackAt(path.join(root.mnt, name)).map((m) => backingFileOf(m));
        const slow = path.join(root.data, `${name}.sqfs`);
        const cache = path.join(root.cache, `${name}.sqfs`);
        if (!(layers.length === 1 && layers[0] === slow) && !(layers.length === 2 && layers[0] === slow && layers[1] === cache)) return differs(`${name}'s stack`, layers, [slow, "(cache)"]);
      }
      const loops = loopsBackedUnder(root.root).map((l) => l["back-file"]);
      const mounts = mountsUnder(root.mnt).map((m) => m.target);
      return loops.length === mounts.length || differs("loop devices vs mounts", loops, mounts);
    };
    await waitUntil("the final state", settled, 30_000).catch((err: unknown) => {
      throw new Error(`${String(err)}; last difference: ${mismatch}`);
    });
    for (const name of wanted) {
      const expected = readFileSync(path.join(root.data, `${name}.sqfs`)).equals(readFileSync(versions.get(name)?.[0] as string)) ? `${name} v1` : `${name} v2`;
      assert.equal(readFileSync(path.join(root.mnt, name, "v.txt"), "utf8"), expected, `${name} serves the image now in datadir`);
    }
    const cacheBytes = readdirSync(root.cache).reduce((s, f) => s + readFileSync(path.join(root.cache, f)).length, 0);
    assert.ok(cacheBytes <= 1024 * KB, `cache holds ${cacheBytes} bytes, capacity 1 MiB`);
    assert.equal(d.child.exitCode, null, "the daemon survived");
    assert.equal(d.logs.filter((l) => l.msg === "tick failed").length, 0, "no tick failed");
    t.diagnostic(
      `soak: ${STEPS} operations in ${churnMs} ms over ${churnTicks} ticks, datadir out meanwhile (${outages.map((o) => `${o.mode} for ${o.to - o.from} ms`).join(", ")}); daemon peak RSS ${(rssKiB / 1024).toFixed(1)} MiB; final: ${wanted.length} datasets, ${readdirSync(root.cache).length} cached`,
    );
  });
});

/** observe/probe.ts with a scripted runner: what is read, in which order, and what a round says. */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import type { Clock } from "../../src/lib/clock.js";
import { CommandFailedError, type Runner } from "../../src/lib/exec.js";
import { LayerProbe, probeSlowLayer, type CacheTarget, type ProbeRound, type SlowTarget } from "../../src/observe/probe.js";

const sys = mkdtempSync(path.join(tmpdir(), "probe-sys-"));
after(() => rmSync(sys, { recursive: true, force: true }));
function loopDio(name: string, on: boolean): void {
  mkdirSync(path.join(sys, "block", name, "loop"), { recursive: true });
  writeFileSync(path.join(sys, "block", name, "loop", "dio"), on ? "1\n" : "0\n");
}

/** A runner that records each command and fails those `fail` picks, with dd's words. */
function scripted(fail: (argv: string[]) => string | undefined = () => undefined): { run: Runner; calls: string[][] } {
  const calls: string[][] = [];
  const run: Runner = async (file, args) => {
    const argv = [file, ...args];
    calls.push(argv);
    const text = fail(argv);
    if (text !== undefined) throw new CommandFailedError(argv, 1, null, `dd: error reading '${args[0]?.slice(3) ?? ""}': ${text}\n`, 1, false, false);
    return { stdout: "", stderr: "", ms: 1 };
  };
  return { run, calls };
}

const slow = (n: number, o: Partial<SlowTarget> = {}): SlowTarget => ({ tier: "slow", dataset: `d${n}`, path: `/dev/loop${n}`, sizeBytes: 1 << 20, image: `/data/d${n}.sqfs`, device: `7:${n}`, mountId: 100 + n, ...o });
const cache = (n: number): CacheTarget => ({ tier: "cache", dataset: `c${n}`, path: `/dev/loop${50 + n}`, sizeBytes: 1 << 20 });

describe("probeSlowLayer", () => {
  test("the image first (O_DIRECT), then the loop device switched to direct I/O for the read and back", async () => {
    loopDio("loop1", false);
    const { run, calls } = scripted();
    const r = await probeSlowLayer(run, slow(1), 8192, 1000, undefined, sys);
    assert.equal(r.ok, true);
    assert.deepEqual(calls.map((c) => `${c[0]} ${c.find((a) => a.startsWith("if=") || a.startsWith("--direct-io")) ?? ""}`), ["dd if=/data/d1.sqfs", "losetup --direct-io=on", "dd if=/dev/loop1", "losetup --direct-io=off"]);
    assert.ok(calls[0]?.includes("iflag=direct") && calls[0].includes("skip=2"), "the image's block at the offset, with O_DIRECT");
    assert.ok(calls[2]?.includes("skip=2"), "the same block through the loop device");
  });
  test("a device already in direct I/O is left so", async () => {
    loopDio("loop2", true);
    const { run, calls } = scripted();
    await probeSlowLayer(run, slow(2), 0, 1000, undefined, sys);
    assert.equal(calls.filter((c) => c[0] === "losetup").length, 0);
  });
  test("the image fails to read: the loop device is not tried (the server's trouble, not the layer's)", async () => {
    loopDio("loop3", false);
    const { run, calls } = scripted((argv) => (argv.includes("if=/data/d3.sqfs") ? "Input/output error" : undefined));
    const r = await probeSlowLayer(run, slow(3), 0, 1000, undefined, sys);
    assert.ok(!r.ok && "image" in r && !r.image.ok);
    assert.equal(calls.length, 1);
  });
  test("the image reads, the loop device does not: the error is the layer's, and direct I/O is switched back off all the same", async () => {
    loopDio("loop4", false);
    const { run, calls } = scripted((argv) => (argv.includes("if=/dev/loop4") ? "Transport endpoint is not connected" : undefined));
    const r = await probeSlowLayer(run, slow(4), 0, 1000, undefined, sys);
    assert.ok(!r.ok && "image" in r && r.image.ok);
    assert.equal(r.ok ? "" : r.code, "ENOTCONN");
    assert.deepEqual(calls.at(-1)?.slice(0, 2), ["losetup", "--direct-io=off"]);
  });
});

describe("LayerProbe", () => {
  let t = 0;
  const clock = { now: () => t, monotonic: () => t, sleep: async () => undefined } as Clock;
  const options = { liveness: false, everyMs: () => 5000, perRound: 2, slowPerRound: 2, urgentPerRound: 3, concurrency: 2, timeoutMs: () => 1000, sysRoot: sys };
  const settle = async (probe: LayerProbe): Promise<ProbeRound> => {
    // The reads are scripted; only the sysfs files are real: a round ends within milliseconds.
    for (let i = 0; i < 400; i++) {
      const round = probe.take();
      if (round) return round;
      await new Promise((r) => setTimeout(r, 5));
    }
    throw new Error("no round finished");
  };

  test("a round: suspect slow layers first (each once per suspicion), then cached copies and slow layers in turn; the loop devices' reads counted", async () => {
    for (let i = 0; i < 8; i++) loopDio(`loop${i}`, false);
    for (let i = 0; i < 4; i++) loopDio(`loop${50 + i}`, false);
    const { run } = scripted();
    const told: string[] = [];
    const probe = new LayerProbe(run, clock, { ...options, onLoopRead: (device, bytes, failed) => told.push(`${device}:${failed ? -bytes : bytes}`) });
    const suspects = [slow(0, { suspectSince: 1 }), slow(1, { suspectSince: 1 }), slow(2, { suspectSince: 1 }), slow(3, { suspectSince: 1 })];
    const targets = [...suspects, slow(4), slow(5), slow(6), cache(0), cache(1), cache(2)];
    t = 10_000;
    probe.kick(targets);
    const first = await settle(probe);
    assert.deepEqual(first.results.map((r) => r.target.dataset), ["d0", "d1", "d2", "c0", "c1", "d4", "d5"]);
    assert.deepEqual(told.splice(0).sort(), ["loop0", "loop1", "loop2", "loop50", "loop51", "loop4", "loop5"].map((d) => `${d}:4096`).sort(), "each read through a loop device told (not as jobs' reads)");
    probe.kick(targets);
    assert.equal(probe.take(), undefined, "not before everyMs");
    t = 15_000;
    probe.kick(targets);
    const second = await settle(probe);
    assert.deepEqual(second.results.map((r) => r.target.dataset), ["d3", "c2", "c0", "d6", "d4"], "the last suspect, once; the others' turn");
    t = 20_000;
    probe.kick(targets.map((x) => (x.tier === "slow" && x.suspectSince !== undefined ? { ...x, suspectSince: 2 } : x)));
    const third = await settle(probe);
    assert.deepEqual(third.results.slice(0, 3).map((r) => r.target.dataset), ["d1", "d2", "d3"], "a new suspicion: each read again (where the turn stood)");
  });

  test("what a round in flight says of a dataset whose layers changed meanwhile is dropped", async () => {
    loopDio("loop7", false);
    let release: (() => void) | undefined;
    const gate = new Promise<void>((r) => (release = r));
    const run: Runner = async (file, args) => {
      await gate;
      if (file === "dd" && args.includes("if=/dev/loop7")) throw new CommandFailedError([file, ...args], 1, null, "dd: error reading '/dev/loop7': Input/output error\n", 1, false, false);
      return { stdout: "", stderr: "", ms: 1 };
    };
    const probe = new LayerProbe(run, clock, options);
    t = 100_000;
    probe.kick([slow(7), cache(3)]);
    probe.changed(["d7"]);
    release?.();
    const round = await settle(probe);
    assert.deepEqual(round.results.map((r) => r.target.dataset), ["c3"]);
  });

  test("liveness: one image in datadir read with O_DIRECT each period, apart from the rounds (one stuck on a dead server starts no other); its result taken with the next round", async () => {
    const reads: string[] = [];
    let hang = false;
    const run: Runner = async (file, args) => {
      if (file === "dd" && args.includes("if=/dev/loop9")) {
        // The round's read of the loop device never ends (a stalled server).
        await new Promise(() => undefined);
      }
      if (file === "dd" && args.some((a) => a.startsWith("if=/data/"))) {
        reads.push(args.find((a) => a.startsWith("if=")) as string);
        if (hang) throw new CommandFailedError([file, ...args], null, "SIGKILL", "", 1000, true, false);
      }
      return { stdout: "", stderr: "", ms: 1 };
    };
    loopDio("loop9", false);
    const probe = new LayerProbe(run, clock, { ...options, liveness: true, perRound: 0, slowPerRound: 1 });
    t = 200_000;
    probe.kick([slow(9)]);
    // The round reads the image itself (no liveness read besides), then hangs on the loop device.
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(reads.length, 1, "one image read: the round's");
    assert.equal(probe.take(), undefined, "the round is stuck");
    hang = true;
    t = 205_000;
    probe.kick([slow(9)]);
    const second = await settle(probe);
    const stuck = second.results.find((r) => "image" in r && !r.image.ok);
    assert.ok(stuck && "image" in stuck && !stuck.image.ok && stuck.image.timedOut, "a read that did not finish, though the round is stuck");
    assert.equal(reads.length, 2, "the round's image read, then the liveness read while the round is stuck");
  });

  test("liveness: a round that reads no image (its suspects all read already, nothing else to read) does not stand in for the liveness read", async () => {
    const reads: string[] = [];
    const run: Runner = async (file, args) => {
      if (file === "dd" && args.some((a) => a.startsWith("if=/data/"))) reads.push(args.find((a) => a.startsWith("if=")) as string);
      return { stdout: "", stderr: "", ms: 1 };
    };
    loopDio("loop8", false);
    const probe = new LayerProbe(run, clock, { ...options, liveness: true, perRound: 0, slowPerRound: 1 });
    const suspectLayer = slow(8, { suspectSince: 7 });
    t = 300_000;
    probe.kick([suspectLayer]);
    await settle(probe);
    assert.equal(reads.length, 1, "the suspect read once, by the round (its image first)");
    // From now on no round reads anything (the one suspect was read for this suspicion): the image is read all the same, each period.
    for (const at of [305_000, 310_000, 315_000]) {
      t = at;
      probe.kick([suspectLayer]);
      const round = await settle(probe);
      assert.ok(round.results.some((r) => "image" in r && r.image.ok), `a read of the image at ${at}`);
    }
    assert.equal(reads.length, 4, "one image read a period");
  });
});

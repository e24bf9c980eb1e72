/** DirWatch: one operation at a time on a directory; a tick waits for a scan only so long; stale scans are not believed. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { DirWatch } from "../../src/observe/dir-watch.js";
import { ScanError } from "../../src/observe/scan.js";

/** A job the test finishes by hand. */
function manualJob<T>() {
  const calls: { resolve: (v: T) => void; reject: (e: unknown) => void }[] = [];
  const job = () => new Promise<T>((resolve, reject) => calls.push({ resolve, reject }));
  return { job, calls };
}

describe("DirWatch", () => {
  test("a scan that takes longer than the tick waits is 'waiting', never queued twice; the next tick takes its result", async () => {
    const w = new DirWatch<number>("/d");
    const { job, calls } = manualJob<number>();
    assert.equal((await w.poll(job, 20)).kind, "waiting");
    assert.equal((await w.poll(job, 20)).kind, "waiting");
    assert.equal(calls.length, 1, "one scan outstanding, not one per tick");
    calls[0]?.resolve(42);
    const view = await w.poll(job, 20);
    assert.deepEqual(view.kind === "fresh" && view.result, 42);
  });
  test("a failed scan gives its errno", async () => {
    const w = new DirWatch<number>("/d");
    const view = await w.poll(() => Promise.reject(new ScanError("ESTALE", "stale")), 100);
    assert.equal(view.kind === "failed" && view.code, "ESTALE");
  });
  test("invalidate(): a scan started before is not believed; a new one is made", async () => {
    const w = new DirWatch<number>("/d");
    const { job, calls } = manualJob<number>();
    assert.equal((await w.poll(job, 10)).kind, "waiting");
    w.invalidate();
    calls[0]?.resolve(1);
    const pending = w.poll(job, 200);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(calls.length, 2, "a second scan started");
    calls[1]?.resolve(2);
    const view = await pending;
    assert.deepEqual(view.kind === "fresh" && view.result, 2);
  });
  test("exclusive(): operations run one after the other; a caller that aborts stops waiting", async () => {
    const w = new DirWatch<number>("/d");
    const order: string[] = [];
    let release = () => {};
    const first = w.exclusive(() => new Promise<void>((r) => (release = () => (order.push("first"), r()))));
    const second = w.exclusive(async () => void order.push("second"));
    const ac = new AbortController();
    const third = w.exclusive(async () => void order.push("third"), ac.signal);
    ac.abort();
    await assert.rejects(third, /cancelled/);
    release();
    await Promise.all([first, second]);
    assert.deepEqual(order, ["first", "second"]);
  });
  test("exclusive(): a caller that aborted before its turn leaves no unhandled rejection when its turn comes (it crashed the daemon)", async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on("unhandledRejection", onUnhandled);
    try {
      const w = new DirWatch<number>("/d");
      let release = () => {};
      const first = w.exclusive(() => new Promise<void>((r) => (release = r)));
      const ac = new AbortController();
      ac.abort();
      // Already aborted when it asks: refused at once, and its queued turn fails later, with no one waiting.
      await assert.rejects(w.exclusive(async () => 1, ac.signal), /cancelled/);
      release();
      await first;
      await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(unhandled, []);
    } finally {
      process.off("unhandledRejection", onUnhandled);
    }
  });
});

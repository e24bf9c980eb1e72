import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ThroughputWindow } from "../../bench/sim/throughput-window.js";
import { TickClock, TierHistory } from "../../src/plan/window.js";
import { prng } from "./helpers.js";

const SECOND = 1000;
const MB = 1_000_000;

/** Feed `w` one sample every `step` ms from `from` to `to` (inclusive), the counter given by `bytesAt(t)`. */
function feed(w: ThroughputWindow, from: number, to: number, step: number, bytesAt: (t: number) => number): void {
  for (let t = from; t <= to; t += step) w.add(t, bytesAt(t));
}

describe("ThroughputWindow: bytes read over the sliding window", () => {
  test("no sample, or a single one, reads as 0 B/s", () => {
    const w = new ThroughputWindow(60 * SECOND);
    assert.equal(w.rate(), 0);
    assert.equal(w.bytesInWindow(), 0);
    w.add(0, 123 * MB);
    assert.equal(w.rate(), 0, "one sample is only a baseline");
    assert.equal(w.bytesInWindow(), 0);
  });

  test("a steady reader is rated at its read rate", () => {
    const w = new ThroughputWindow(60 * SECOND);
    // 1 MB/s for 200 s, sampled every 5 s like the daemon's tick.
    feed(w, 0, 200 * SECOND, 5 * SECOND, (t) => (t / SECOND) * MB);
    assert.equal(w.rate(), MB);
  });

  test("the rate is over the window, not since the first sample", () => {
    const w = new ThroughputWindow(60 * SECOND);
    // 10 MB/s for the first 100 s, then 1 MB/s for 100 s: only the last minute counts.
    feed(w, 0, 200 * SECOND, 5 * SECOND, (t) => (t <= 100 * SECOND ? 10 * t : 1000 * SECOND + (t - 100 * SECOND)) * (MB / SECOND));
    // Baseline: the last sample older than the window (t = 135 s), 65 s before the last one.
    assert.equal(w.rate(), MB);
  });

  test("half-window floor: a dataset seen for 5 s is rated over half the window, not over 5 s", () => {
    const w = new ThroughputWindow(60 * SECOND);
    w.add(0, 0);
    w.add(5 * SECOND, 100 * MB);
    assert.equal(w.rate(), (100 * MB) / 30, "100 MB over max(5 s, 30 s)");
    assert.ok(w.rate() < (100 * MB) / 5, "not over-rated");
  });

  test("between half and the whole window, the elapsed time is the divisor", () => {
    const w = new ThroughputWindow(60 * SECOND);
    w.add(0, 0);
    w.add(45 * SECOND, 90 * MB);
    assert.equal(w.rate(), 2 * MB);
  });

  test("the half-window floor follows the window length", () => {
    const w = new ThroughputWindow(1200 * SECOND);
    w.add(0, 0);
    w.add(5 * SECOND, 600 * MB);
    assert.equal(w.rate(), MB, "600 MB over 600 s");
  });

  test("a burst older than the window is forgotten", () => {
    const w = new ThroughputWindow(60 * SECOND);
    w.add(0, 0);
    w.add(5 * SECOND, 500 * MB);
    assert.ok(w.rate() > 0);
    feed(w, 10 * SECOND, 200 * SECOND, 5 * SECOND, () => 500 * MB);
    assert.equal(w.rate(), 0);
    assert.equal(w.bytesInWindow(), 0);
  });

  test("a burst partly out of the window: only what was read since the baseline counts", () => {
    const w = new ThroughputWindow(60 * SECOND);
    feed(w, 0, 100 * SECOND, 5 * SECOND, () => 0);
    w.add(105 * SECOND, 300 * MB); // in the window
    feed(w, 110 * SECOND, 140 * SECOND, 5 * SECOND, () => 300 * MB);
    // last = 140 s, window starts at 80 s, baseline = 75 s (0 bytes): 300 MB over 65 s.
    assert.equal(w.rate(), (300 * MB) / 65);
    feed(w, 145 * SECOND, 170 * SECOND, 5 * SECOND, () => 300 * MB);
    // last = 170 s, window starts at 110 s, baseline = 105 s: the burst is before it.
    assert.equal(w.rate(), 0);
  });

  test("a long gap between samples is divided by the real elapsed time, so it is not over-rated", () => {
    const w = new ThroughputWindow(60 * SECOND);
    w.add(0, 0);
    w.add(200 * SECOND, 200 * MB);
    assert.equal(w.rate(), MB);
  });

  test("old samples are dropped: memory stays bounded on a long run", () => {
    const w = new ThroughputWindow(60 * SECOND);
    feed(w, 0, 24 * 3600 * SECOND, 5 * SECOND, (t) => t);
    const size: unknown = Reflect.get(w, "size");
    const times: unknown = Reflect.get(w, "times");
    assert.ok(typeof size === "number" && times instanceof Float64Array);
    // 60 s / 5 s = 12 samples in the window, plus the baseline before it; the ring grows by doubling.
    assert.ok(size <= 14, `kept ${size} samples`);
    assert.ok(times.length <= 16, `ring of ${times.length}`);
    assert.equal(w.rate(), 1000, "one byte per millisecond");
  });

  test("the ring wraps and grows without changing the rate: the same as a plain list of samples", () => {
    const w = new ThroughputWindow(30 * SECOND);
    const list: { t: number; bytes: number }[] = [];
    let bytes = 0;
    for (let t = 0; t < 600 * SECOND; t += (1 + ((t / SECOND) % 7)) * SECOND) {
      bytes += (t / SECOND) % 3 === 0 ? 0 : 5 * MB;
      w.add(t, bytes);
      list.push({ t, bytes });
      const start = t - 30 * SECOND;
      const base = list.filter((x) => x.t < start).at(-1) ?? list[0];
      if (!base) continue;
      assert.equal(w.rate(), (bytes - base.bytes) / (Math.max(t - base.t, 15 * SECOND) / 1000), `at ${t / SECOND} s`);
    }
  });

  test("bytesInWindow counts the reads since the baseline", () => {
    const w = new ThroughputWindow(60 * SECOND);
    feed(w, 0, 200 * SECOND, 5 * SECOND, (t) => (t / SECOND) * MB);
    assert.equal(w.bytesInWindow(), 65 * MB);
  });

  test("shortening periodMs narrows the window at once", () => {
    const w = new ThroughputWindow(60 * SECOND);
    // Idle until 100 s, then 2 MB/s until 120 s.
    feed(w, 0, 120 * SECOND, 5 * SECOND, (t) => Math.max(0, t - 100 * SECOND) * ((2 * MB) / SECOND));
    assert.equal(w.rate(), (40 * MB) / 65, "60 s window: baseline at 55 s");
    w.periodMs = 20 * SECOND;
    assert.equal(w.rate(), (40 * MB) / 25, "20 s window: baseline at 95 s");
  });
});

describe("TickClock + TierHistory: the same rates as ThroughputWindow, storing only the ticks that changed", () => {
  test("random traces (idle stretches, bursts, irregular ticks, a dataset appearing late): identical rates over the window and a quarter of it", () => {
    const rand = prng(11);
    for (let trace = 0; trace < 20; trace++) {
      const periodMs = [60_000, 300_000, 1_200_000][trace % 3] as number;
      const clock = new TickClock();
      const starts = [0, 7, 40, 250];
      const histories = starts.map((s) => ({ start: s, h: undefined as TierHistory | undefined, ref: new ThroughputWindow(periodMs), fastRef: new ThroughputWindow(periodMs / 4), total: 0 }));
      let t = 0;
      for (let i = 0; i < 600; i++) {
        t += 4000 + Math.floor(rand() * 2000);
        const tick = clock.add(t, periodMs);
        const baseline = clock.baseline(tick, periodMs);
        for (const d of histories) {
          if (i < d.start) continue;
          d.h ??= new TierHistory(tick);
          const busy = Math.floor(i / 50) % 3 === 0;
          const delta = busy && rand() < 0.7 ? Math.floor(rand() * 50 * MB) : 0;
          d.h.add(tick, delta);
          d.total += delta;
          d.ref.add(t, d.total);
          d.fastRef.add(t, d.total);
          if (baseline !== undefined) d.h.trim(baseline);
          assert.equal(d.h.rate(clock, tick, periodMs), d.ref.rate(), `trace ${trace} tick ${i} start ${d.start}: window`);
          assert.equal(d.h.rate(clock, tick, periodMs / 4), d.fastRef.rate(), `trace ${trace} tick ${i} start ${d.start}: fast window`);
        }
      }
    }
  });

  test("an idle dataset keeps one entry however long it lives: memory does not grow with the ticks", () => {
    const clock = new TickClock();
    const h = new TierHistory(clock.add(0, 60_000));
    for (let i = 1; i < 10_000; i++) {
      const tick = clock.add(i * 5000, 60_000);
      h.add(tick, 0);
      const b = clock.baseline(tick, 60_000);
      if (b !== undefined) h.trim(b);
    }
    assert.equal(h.rate(clock, clock.count - 1, 60_000), 0);
    assert.equal((h as unknown as { ticks: number[] }).ticks.length, 1);
  });
});

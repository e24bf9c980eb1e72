import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { formatBytes, formatRate, parseDuration, parseSize } from "../../src/units.js";
import { GiB, KiB, MiB, TiB } from "./helpers.js";

describe("parseSize: NMB, NGB, NTB in powers of 1024 (as the original), or plain bytes", () => {
  const accepted: [string, number][] = [
    ["0", 0],
    ["4096", 4096],
    ["512B", 512],
    ["1KB", KiB],
    ["1K", KiB],
    ["500MB", 500 * MiB],
    ["2GB", 2 * GiB],
    ["3TB", 3 * TiB],
    ["1.5TB", 1.5 * TiB],
    ["0.5GB", 512 * MiB],
    [".5KB", 512],
    ["100gb", 100 * GiB],
    ["10 GiB", 10 * GiB],
    ["  7G  ", 7 * GiB],
    ["1PB", 1024 * TiB],
  ];
  for (const [text, bytes] of accepted) {
    test(`${JSON.stringify(text)} is ${bytes} bytes`, () => assert.equal(parseSize(text), bytes));
  }

  test("fractions of a byte are floored to whole bytes", () => {
    assert.equal(parseSize("1.1KB"), 1126);
    assert.equal(parseSize("1.5"), 1);
  });

  const refused = ["", " ", "abc", "GB", "-1", "-1GB", "1XB", "1e3", "1.2.3GB", "1,5TB", "1 0GB", "12%", "NaN", "Infinity", "0x10"];
  for (const text of refused) {
    test(`${JSON.stringify(text)} is not a size`, () => assert.equal(parseSize(text), undefined));
  }
});

describe("parseDuration: seconds, or N followed by s, m, h or d", () => {
  const accepted: [string, number][] = [
    ["1200", 1200],
    ["0", 0],
    ["600s", 600],
    ["10m", 600],
    ["10min", 600],
    ["10 M", 600],
    ["2h", 7200],
    ["1d", 86400],
    ["1.5m", 90],
    ["2.5", 2.5],
  ];
  for (const [text, seconds] of accepted) {
    test(`${JSON.stringify(text)} is ${seconds} s`, () => assert.equal(parseDuration(text), seconds));
  }
  for (const text of ["", "abc", "-5", "5ms", "1w", "m", "1e2"]) {
    test(`${JSON.stringify(text)} is not a duration`, () => assert.equal(parseDuration(text), undefined));
  }
});

describe("formatBytes: binary units, three significant figures", () => {
  const cases: [number, string][] = [
    [0, "0 B"],
    [1, "1 B"],
    [1023, "1023 B"],
    [KiB, "1.00 KiB"],
    [1536, "1.50 KiB"],
    [10 * MiB, "10.0 MiB"],
    [50.5 * MiB, "50.5 MiB"],
    [100 * GiB, "100 GiB"],
    [1.5 * TiB, "1.50 TiB"],
    [1024 ** 6, "1024 PiB"],
  ];
  for (const [bytes, text] of cases) {
    test(`${bytes} -> ${JSON.stringify(text)}`, () => assert.equal(formatBytes(bytes), text));
  }

  test("what formatBytes prints, parseSize reads back (for exact values)", () => {
    for (const bytes of [0, 512, KiB, 1.5 * KiB, 3 * MiB, 100 * GiB, 1.5 * TiB]) {
      assert.equal(parseSize(formatBytes(bytes)), bytes, formatBytes(bytes));
    }
  });

  test("formatRate rounds to whole bytes per second", () => {
    assert.equal(formatRate(MiB), "1.00 MiB/s");
    assert.equal(formatRate(0.4), "0 B/s");
    assert.equal(formatRate(1023.6), "1.00 KiB/s");
  });
});

test("unit names are looked up as own keys only: Object.prototype's are not units", () => {
  for (const text of ["5constructor", "1toString", "2__proto__", "3hasOwnProperty"]) {
    assert.equal(parseSize(text), undefined, text);
    assert.equal(parseDuration(text), undefined, text);
  }
});

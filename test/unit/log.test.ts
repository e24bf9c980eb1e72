/** Log lines as journald expects them (sd-daemon(3) priority prefixes), and log_format. */
import assert from "node:assert/strict";
import { closeSync, fstatSync, openSync } from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";
import type pino from "pino";
import { validateConfig, type RawConfig } from "../../src/config.js";
import { createLogger, isJournalStream, journalLine, LogDestination, resolveLogFormat } from "../../src/log.js";
import { assertUsageError, tempDir } from "./helpers.js";

const BASE: RawConfig = { datadir: "/a", cachedir: "/b", mountdir: "/c", capacity: "1TB" };

/** Collects what the logger writes. */
function sink(): pino.DestinationStream & { lines: string[] } {
  const lines: string[] = [];
  return { lines, write: (s: string) => void lines.push(s) };
}

describe("journalLine: one of pino's JSON lines as journald reads it", () => {
  const cases: { title: string; json: object; line: string }[] = [
    { title: "info is <6>, the message first, fields as key=value, no timestamp", json: { level: "info", time: "2025-05-12T13:30:00.000Z", dataset: "imagenet", tier: "slow", msg: "mounted image" }, line: "<6>mounted image dataset=imagenet tier=slow" },
    { title: "warn is <4> (journalctl -p warning)", json: { level: "warn", dataset: "coco", failures: 2, retryInMs: 20000, msg: "dataset in back-off" }, line: "<4>dataset in back-off dataset=coco failures=2 retryInMs=20000" },
    { title: "error is <3>", json: { level: "error", file: "notes.sqfs", reason: "not a squashfs or EROFS image", msg: "image refused" }, line: '<3>image refused file=notes.sqfs reason="not a squashfs or EROFS image"' },
    { title: "debug and trace are <7>, fatal is <2>", json: { level: "debug", ms: 3, msg: "tick" }, line: "<7>tick ms=3" },
    { title: "fatal is <2>", json: { level: "fatal", msg: "x" }, line: "<2>x" },
    { title: "a value with a quote, a backslash or an = is quoted with JSON's escapes", json: { level: "info", a: 'say "hi"', b: "c:\\d", c: "k=v", d: "", msg: "m" }, line: '<6>m a="say \\"hi\\"" b="c:\\\\d" c="k=v" d=""' },
    { title: "arrays and objects are compact JSON, quoted when they hold a space", json: { level: "info", pins: ["a", "b"], o: { x: "y z" }, n: null, t: true, msg: "starting" }, line: '<6>starting pins=["a","b"] o="{\\"x\\":\\"y z\\"}" n=null t=true' },
    { title: "a newline never splits the entry (the rest would lose its priority)", json: { level: "error", err: "line one\nline two", msg: "tick failed\nagain" }, line: '<3>tick failed\\nagain err="line one\\nline two"' },
    { title: "non-ASCII names stay as they are", json: { level: "info", dataset: "données", msg: "mounted image" }, line: "<6>mounted image dataset=données" },
  ];
  for (const c of cases) {
    test(c.title, () => assert.equal(journalLine(JSON.stringify(c.json)), `${c.line}\n`));
  }
  test("a line that is not JSON goes out as info, in one line", () => assert.equal(journalLine("oops\n"), "<6>oops\n"));
});

describe("the logger with each format", () => {
  test("journal: what the daemon logs comes out prefixed, without a time", () => {
    const out = sink();
    const logger = createLogger(false, new LogDestination("journal", out));
    logger.warn({ dataset: "coco", key: "conflict" }, "two images for one name");
    logger.info("stopped");
    logger.debug("not at info level");
    assert.deepEqual(out.lines, ["<4>two images for one name dataset=coco key=conflict\n", "<6>stopped\n"]);
  });
  test("json: pino's line with its time, for log shippers; the format can change on reload", () => {
    const out = sink();
    const destination = new LogDestination("json", out);
    const logger = createLogger(true, destination);
    logger.debug({ ms: 4 }, "tick");
    const line = JSON.parse(out.lines[0] ?? "") as Record<string, unknown>;
    assert.deepEqual([line.level, line.msg, line.ms, typeof line.time], ["debug", "tick", 4, "string"]);
    destination.format = "journal";
    logger.info("configuration reloaded");
    assert.equal(out.lines[1], "<6>configuration reloaded\n");
  });
});

describe("log_format", () => {
  test("auto by default: journal when stdout is the journal's stream, json otherwise", () => {
    assert.equal(validateConfig(BASE).logFormat, "auto");
    assert.equal(resolveLogFormat("auto", () => true), "journal");
    assert.equal(resolveLogFormat("auto", () => false), "json");
    assert.equal(resolveLogFormat("json", () => true), "json");
    assert.equal(resolveLogFormat("journal", () => false), "journal");
  });
  for (const value of ["journal", "json", " auto "]) {
    test(`${JSON.stringify(value)} is accepted`, () => assert.equal(validateConfig({ ...BASE, log_format: value }).logFormat, value.trim()));
  }
  for (const value of ["syslog", "JSON", ""]) {
    test(`${JSON.stringify(value)} is one error naming log_format and the accepted values`, () => {
      assertUsageError(() => validateConfig({ ...BASE, log_format: value }), "log_format", "auto or journal or json");
    });
  }
  test("JOURNAL_STREAM counts only when it is this very stream's device:inode (systemd.exec(5))", async () => {
    const { dir, cleanup } = await tempDir();
    const fd = openSync(path.join(dir, "out"), "w");
    try {
      const st = fstatSync(fd, { bigint: true });
      assert.equal(isJournalStream({ JOURNAL_STREAM: `${st.dev}:${st.ino}` }, fd), true);
      assert.equal(isJournalStream({ JOURNAL_STREAM: `${st.dev}:${st.ino + 1n}` }, fd), false, "inherited by a program whose output goes elsewhere");
      assert.equal(isJournalStream({}, fd), false);
    } finally {
      closeSync(fd);
      await cleanup();
    }
  });
});

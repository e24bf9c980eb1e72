import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdir, readdir, readFile, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { statusOutput, resolveRuntimeDir } from "../../src/commands/status.js";
import { CONFIG_KEYS, DEFAULT_RUNTIME_DIR, parseHostPort } from "../../src/config.js";
import { UsageError } from "../../src/errors.js";
import { growth, Metrics } from "../../src/report/metrics.js";
import {
  DaemonNotRunning,
  processAlive,
  readStatusFile,
  StatusFileError,
  statusBody,
  statusFilePath,
  withBody,
  writeStatusFile,
} from "../../src/report/status-file.js";
import type { DatasetStatus, StatusReport } from "../../src/report/status.js";
import { columns, renderStatus } from "../../src/report/table.js";
import { findPromtool } from "./monitoring.js";
import { GiB, MiB, tempDir, TiB } from "./helpers.js";

// Times in the table are local; fix the zone so that "14:05" means 14:05 UTC.
process.env.TZ = "UTC";

const T0 = Date.UTC(2025, 4, 12, 13, 30, 0);

function ds(name: string, over: Partial<DatasetStatus> = {}): DatasetStatus {
  return {
    name,
    imageFile: `/srv/data/${name}.sqfs`,
    sizeBytes: GiB,
    state: "slow",
    pinned: false,
    slowBytesPerSecond: 0,
    cacheBytesPerSecond: 0,
    slowBytesRead: 0,
    cacheBytesRead: 0,
    ...over,
  };
}

function makeReport(over: Partial<StatusReport> = {}): StatusReport {
  return {
    version: 1,
    pid: process.pid,
    writtenAt: T0,
    intervalSeconds: 5,
    periodSeconds: 1200,
    datasets: [
      ds("imagenet", {
        sizeBytes: 140 * GiB,
        state: "copying",
        copy: { doneBytes: 0.42 * 140 * GiB, totalBytes: 140 * GiB, bytesPerSecond: 180 * MiB, startedAt: T0 - 60_000 },
        slowBytesPerSecond: 95 * MiB,
        slowBytesRead: 40 * GiB,
      }),
      ds("coco", { sizeBytes: 12 * GiB, state: "cached", pinned: true, cacheBytesPerSecond: 310 * MiB, cacheBytesRead: 3 * TiB, slowBytesRead: 5 * GiB }),
      ds("places", { state: "slow", pinned: true, pinExpiresAt: Date.UTC(2025, 4, 12, 14, 5, 0), note: "pin does not fit: 2.0 GiB over capacity" }),
      ds("laion", { state: "queued", sizeBytes: 300 * GiB, slowBytesPerSecond: 12 * MiB }),
    ],
    refused: [
      { file: "/srv/data/notes.sqfs", reason: "not a squashfs or EROFS image (no superblock magic at offset 0 or 1024)" },
      { file: "/srv/data/half.sqfs", reason: "truncated" },
    ],
    cache: {
      dir: "/ssd/cache",
      usedBytes: 12 * GiB,
      capacityBytes: 500 * GiB,
      ghostBytes: 0,
      fsTotalBytes: 1.75 * TiB,
      fsFreeBytes: 1.2 * TiB,
    },
    cacheBytesServed: 3 * TiB,
    copies: { started: 2, finished: 1, failed: 0, cancelled: 0, bytes: 12 * GiB },
    tick: { count: 100, ms: 42 },
    problems: ['pin "missing" names no dataset'],
    ...over,
  };
}

/** datadir not answering for 95 s, last believed 100 s ago; cachedir fine. */
function troubledStorage(): NonNullable<StatusReport["storage"]> {
  return {
    datadir: { dir: "datadir", path: "/srv/data", available: false, reason: "NotResponding", message: "not answering for 95 s", since: T0 - 95_000, lastGoodScanAt: T0 - 100_000 },
    cachedir: { dir: "cachedir", path: "/ssd/cache", available: true, reason: "Available", message: "answering", since: T0 - 3_600_000, lastGoodScanAt: T0 - 1000 },
  };
}

function rowOf(text: string, name: string): string {
  const row = text.split("\n").find((line) => line.startsWith(`${name} `));
  assert.ok(row !== undefined, `no row for ${name} in:\n${text}`);
  return row;
}

describe("renderStatus: the table of `scratch_manager status`", () => {
  test("a directory that cannot be believed is said above the table: what, since when, what the daemon does", () => {
    const text = renderStatus(makeReport({ storage: troubledStorage() }));
    const first = text.split("\n")[0] ?? "";
    assert.match(first, /^datadir \/srv\/data: UNAVAILABLE since \d\d:\d\d:\d\d \(95 s\): not answering for 95 s \[NotResponding\]; last read at \d\d:\d\d:\d\d; serving what is mounted and cached/);
    assert.ok(!text.includes("cachedir /ssd/cache: UNAVAILABLE"), "cachedir answers: not mentioned");
    assert.match(text, /\n\nNAME /, "then the table");
  });
  test("both directories available: the summary starts with the cache", () => {
    const storage = troubledStorage();
    storage.datadir = { ...storage.datadir, available: true, reason: "Available", message: "answering" };
    assert.ok(renderStatus(makeReport({ storage })).startsWith("cache: "));
  });
  test("while datasets are still being mounted, how far", () => {
    assert.match(renderStatus(makeReport({ mounting: { mounted: 3000, total: 10000 } })), /^mounting: 3000 of 10000 datasets mounted so far$/m);
  });

  const text = renderStatus(makeReport());

  test("the summary on top (it would scroll away under thousands of rows), then a header, one row per dataset in name order, the refused images", () => {
    const lines = text.split("\n");
    assert.match(lines[0] ?? "", /^cache: /);
    const header = lines.findIndex((l) => l.startsWith("NAME"));
    assert.ok(header > 3, "after the summary");
    assert.match(lines[header] ?? "", /^NAME\s+SIZE\s+STATE\s+SLOW\s+CACHE\s+SERVED$/);
    const names = lines.slice(header + 1, header + 7).map((l) => l.split(/\s+/)[0]);
    assert.deepEqual(names, ["coco", "imagenet", "laion", "places", "half.sqfs", "notes.sqfs"]);
  });

  test("columns: aligned in terminal columns, a CJK character counting two", () => {
    const out = columns([["NAME", "SIZE"], ["数据", "1 B"], ["ab", "10 B"]], [false, true]);
    assert.deepEqual(out, ["NAME  SIZE", "数据   1 B", "ab    10 B"]);
  });

  const rows: { name: string; mentions: string[] }[] = [
    { name: "imagenet", mentions: ["140 GiB", "copying 42% at 180 MiB/s", "95.0 MiB/s", "0 B/s"] },
    { name: "coco", mentions: ["12.0 GiB", "cached, pinned", "310 MiB/s", "3.00 TiB"] },
    { name: "places", mentions: ["slow, pinned until 14:05"] },
    { name: "laion", mentions: ["300 GiB", "queued", "12.0 MiB/s"] },
    { name: "half.sqfs", mentions: ["refused: truncated"] },
    { name: "notes.sqfs", mentions: ["refused (see below)"] },
  ];
  for (const r of rows) {
    test(`row ${r.name} shows ${r.mentions.join(" | ")}`, () => {
      const row = rowOf(text, r.name);
      for (const m of r.mentions) assert.ok(row.includes(m), `${JSON.stringify(row)} should show ${JSON.stringify(m)}`);
    });
  }

  test("a pin that expires another day shows the date", () => {
    const report = makeReport({ datasets: [ds("places", { pinned: true, pinExpiresAt: Date.UTC(2025, 4, 13, 9, 0, 0) })] });
    assert.ok(rowOf(renderStatus(report), "places").includes("pinned until 2025-05-13 09:00"));
  });

  test("each refused image once: a reason that fits in its row, a long one only below the table", () => {
    const row = rowOf(text, "notes.sqfs");
    assert.ok(!row.includes("offset 0 or 1024"), row);
    assert.equal(text.split("not a squashfs or EROFS image").length - 1, 1, text);
    assert.ok(text.includes("\nrefused:\n  notes.sqfs: not a squashfs or EROFS image (no superblock magic at offset 0 or 1024)"), text);
    assert.equal(text.split("truncated").length - 1, 1, "half.sqfs's short reason is in its row only");
  });

  test("no line is wider than 100 columns", () => {
    for (const line of text.split("\n")) assert.ok(line.length <= 100, `${line.length} columns: ${line}`);
  });

  test("summary: cache use against capacity with percent, copies, free space, bytes served", () => {
    assert.ok(text.includes("cache: 12.0 GiB of 500 GiB (2%), 1 copy running, 1 queued\n"), text);
    assert.ok(text.includes("cache file system (/ssd/cache): 1.20 TiB free of 1.75 TiB (69%)\n"), text);
    assert.ok(text.includes("served from the cache: 3.00 TiB since the daemon started\n"), text);
    assert.ok(text.includes(`daemon: pid ${process.pid}, status of 13:30:00, read rates over the last 20 min\n`), text);
  });

  test("the free space measured now replaces the daemon's figure", () => {
    const out = renderStatus(makeReport(), { totalBytes: 2 * TiB, freeBytes: 0.5 * TiB });
    assert.ok(out.includes("cache file system (/ssd/cache): 512 GiB free of 2.00 TiB (25%)\n"), out);
  });

  test("notes and problems are listed under the table", () => {
    assert.match(text, /\nnotes:\n {2}places: pin does not fit: 2\.0 GiB over capacity\n/);
    assert.match(text, /\nproblems:\n {2}pin "missing" names no dataset\n/);
  });

  test("copies held open after being dropped are shown only when there are some", () => {
    assert.ok(!text.includes("dropped copies"));
    const out = renderStatus(makeReport({ cache: { ...makeReport().cache, ghostBytes: 3 * GiB } }));
    assert.ok(out.includes("dropped copies still open by readers: 3.00 GiB"), out);
  });

  test("a tiny use shows <1%, an empty daemon says so, and no colour codes", () => {
    const out = renderStatus(makeReport({ datasets: [], refused: [], problems: [], cache: { ...makeReport().cache, usedBytes: MiB } }));
    assert.ok(out.includes("cache: 1.00 MiB of 500 GiB (<1%), 0 copies running\n"), out);
    assert.ok(out.includes("\nno datasets\n"), out);
    assert.ok(!out.includes("\u001b["), "no ANSI escapes");
  });
});

describe("status file: written atomically, read back with liveness checks", () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  before(async () => ({ dir, cleanup } = await tempDir("sm-report-")));
  after(() => cleanup());

  test("round trip; the directory is created 0755 and the file is 0644 whatever the umask; no temporary file left", async () => {
    const runtime = path.join(dir, "run", "scratch_manager");
    const report = makeReport();
    const old = process.umask(0o077);
    try {
      await writeStatusFile(runtime, report);
      await writeStatusFile(runtime, { ...report, tick: { count: 101, ms: 7 } });
    } finally {
      process.umask(old);
    }
    assert.equal((await stat(runtime)).mode & 0o777, 0o755);
    assert.equal((await stat(statusFilePath(runtime))).mode & 0o777, 0o644);
    assert.deepEqual(await readdir(runtime), ["status.json"]);
    assert.deepEqual(await readStatusFile(runtime, { now: T0 + 1000 }), { ...report, tick: { count: 101, ms: 7 } });
  });

  test("a quiet tick's file: the body serialized once, the per-tick fields renewed; the same JSON as a whole report", async () => {
    const runtime = path.join(dir, "quiet");
    const report = makeReport();
    const body = statusBody(report);
    assert.ok(!body.includes('"writtenAt"') && !body.includes('"tick"'), "the body holds no per-tick field");
    const next: StatusReport = { ...report, writtenAt: T0 + 500, tick: { count: 102, ms: 3 }, cacheBytesServed: 77 };
    assert.deepEqual(JSON.parse(withBody(next, body)), JSON.parse(JSON.stringify(next)));
    await writeStatusFile(runtime, next, body);
    assert.deepEqual(await readStatusFile(runtime, { now: T0 + 1000 }), next);
  });

  test("a quiet tick's file: what the Slurm advertiser, the stager and the health check did meanwhile is not taken from the body", () => {
    const device = { up: true, reason: "Up", message: "", since: T0 };
    const first: StatusReport = { ...makeReport(), slurm: { node: "n1", features: [], calls: 0 }, staging: { hits: 0, misses: 0 }, cacheDevice: device };
    const body = statusBody(first);
    const later: StatusReport = { ...first, slurm: { node: "n1", features: ["ds_alpha"], calls: 2, sentAt: T0 + 400 }, staging: { hits: 1, misses: 0 }, cacheDevice: { ...device, health: { device: "/dev/nvme0n1", smart: "predicted-failure", message: "SMART predicts a failure" } } };
    const json = JSON.parse(withBody(later, body)) as StatusReport;
    assert.deepEqual(json.slurm?.features, ["ds_alpha"]);
    assert.equal(json.staging?.hits, 1);
    assert.equal(json.cacheDevice?.health?.smart, "predicted-failure");
  });

  test("no status file: DaemonNotRunning naming the file", async () => {
    const runtime = path.join(dir, "never");
    await assert.rejects(readStatusFile(runtime), (err: unknown) => {
      assert.ok(err instanceof DaemonNotRunning);
      assert.equal(err.message, `the daemon is not running (no status file ${path.join(runtime, "status.json")})`);
      return true;
    });
  });

  const staleness: { title: string; interval: number; ageMs: number; stale: boolean }[] = [
    { title: "5 s interval, 14 s old: fresh (the floor is 15 s)", interval: 5, ageMs: 14_000, stale: false },
    { title: "5 s interval, 16 s old: stale", interval: 5, ageMs: 16_000, stale: true },
    { title: "10 s interval, 29 s old: fresh (3 intervals)", interval: 10, ageMs: 29_000, stale: false },
    { title: "10 s interval, 31 s old: stale", interval: 10, ageMs: 31_000, stale: true },
    { title: "written in the future (clock stepped back): fresh", interval: 5, ageMs: -60_000, stale: false },
  ];
  for (const c of staleness) {
    test(c.title, async () => {
      const runtime = path.join(dir, `stale-${c.interval}-${c.ageMs}`);
      await writeStatusFile(runtime, makeReport({ intervalSeconds: c.interval }));
      const read = readStatusFile(runtime, { now: T0 + c.ageMs });
      if (!c.stale) {
        assert.equal((await read).intervalSeconds, c.interval);
        return;
      }
      await assert.rejects(read, (err: unknown) => {
        assert.ok(err instanceof DaemonNotRunning);
        assert.equal(err.lastWrittenAt, T0);
        assert.ok(err.message.includes("has written no status since 13:30:00"), err.message);
        assert.ok(err.message.includes(`${Math.round(c.ageMs / 1000)} s ago`), err.message);
        return true;
      });
    });
  }

  test("the process that wrote it has exited: DaemonNotRunning saying since when", async () => {
    const child = spawnSync(process.execPath, ["-e", ""]);
    assert.equal(child.status, 0);
    const runtime = path.join(dir, "dead");
    await writeStatusFile(runtime, makeReport({ pid: child.pid }));
    await assert.rejects(readStatusFile(runtime, { now: T0 + 3 * 60_000 }), (err: unknown) => {
      assert.ok(err instanceof DaemonNotRunning);
      assert.equal(err.message, `the daemon is not running (process ${child.pid} has exited; its last status was written at 13:30:00, 3 min ago)`);
      return true;
    });
  });

  test("processAlive: this process and init are alive (EPERM counts as alive), an exited child is not", () => {
    assert.equal(processAlive(process.pid), true);
    assert.equal(processAlive(1), true);
    assert.equal(processAlive(spawnSync(process.execPath, ["-e", ""]).pid), false);
  });

  const bad: { title: string; text: string; mention: string }[] = [
    { title: "not JSON", text: '{"version": 1, "pid": ', mention: "not valid JSON" },
    { title: "another format version", text: JSON.stringify({ ...makeReport(), version: 2 }), mention: "status format version 2, this scratch_manager reads version 1" },
    { title: "not an object", text: "[]", mention: "not a status report" },
    { title: "a field missing", text: JSON.stringify({ ...makeReport(), datasets: undefined }), mention: "datasets is not a list" },
  ];
  for (const c of bad) {
    test(`${c.title}: StatusFileError naming the file`, async () => {
      const runtime = path.join(dir, `bad-${c.title.replace(/\W+/g, "-")}`);
      await mkdir(runtime);
      await writeFile(statusFilePath(runtime), c.text);
      await assert.rejects(readStatusFile(runtime, { now: T0 }), (err: unknown) => {
        assert.ok(err instanceof StatusFileError);
        assert.ok(err.message.startsWith(`${statusFilePath(runtime)}: `), err.message);
        assert.ok(err.message.includes(c.mention), err.message);
        return true;
      });
    });
  }
});

describe("status command", () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  before(async () => ({ dir, cleanup } = await tempDir("sm-status-")));
  after(() => cleanup());

  test("--json: the report plus the cache file system measured now", async () => {
    const runtime = path.join(dir, "json");
    await writeStatusFile(runtime, makeReport());
    const measured: string[] = [];
    const measure = (d: string) => (measured.push(d), Promise.resolve({ totalBytes: 4 * TiB, freeBytes: 3 * TiB }));
    const out = await statusOutput({ json: true, runtimeDir: runtime }, { measure, now: T0 + 2000 });
    const parsed = JSON.parse(out) as StatusReport & { fs: unknown; timeZone: { name: string; utcOffset: string } };
    assert.deepEqual(parsed.fs, { totalBytes: 4 * TiB, freeBytes: 3 * TiB });
    assert.deepEqual(measured, [makeReport().cache.dir], "only the cache directory's file system is measured");
    assert.deepEqual({ ...parsed, fs: undefined, timeZone: undefined }, { ...makeReport(), fs: undefined, timeZone: undefined });
    // The table's times are local: the JSON says which zone, and its offset then (UTC+13:45 in summer in TZ=Pacific/Chatham).
    assert.equal(parsed.timeZone.name, Intl.DateTimeFormat().resolvedOptions().timeZone);
    const minutes = 0 - new Date(T0).getTimezoneOffset();
    const [sign, hh, mm] = /^([+-])(\d\d):(\d\d)$/.exec(parsed.timeZone.utcOffset)?.slice(1) ?? [];
    assert.equal((sign === "-" ? -1 : 1) * (Number(hh) * 60 + Number(mm)), minutes, parsed.timeZone.utcOffset);
  });

  test("the table; when the cache file system cannot be measured (a hung disk), the daemon's own figure", async () => {
    const runtime = path.join(dir, "table");
    await writeStatusFile(runtime, makeReport());
    const out = await statusOutput({ runtimeDir: runtime }, { measure: () => Promise.reject(new Error("stat -f timed out")), now: T0 + 2000 });
    assert.ok(out.startsWith("cache: "), out);
    assert.ok(out.includes("1.20 TiB free of 1.75 TiB"), out);
  });

  test("names or globs, and --state, select the rows; the summary stays whole; --json is filtered the same way", async () => {
    const runtime = path.join(dir, "select");
    await writeStatusFile(runtime, makeReport());
    const measure = () => Promise.resolve({ totalBytes: 4 * TiB, freeBytes: 3 * TiB });
    const out = await statusOutput({ runtimeDir: runtime, state: ["cached,copying"] }, { measure, now: T0 + 2000 });
    assert.deepEqual(
      out.split("\n").filter((l) => /^(coco|imagenet|laion|places|half|notes)/.test(l)).map((l) => l.split(/\s+/)[0]),
      ["coco", "imagenet"],
    );
    assert.ok(out.includes("cache: 12.0 GiB of 500 GiB (2%), 1 copy running, 1 queued\n"), "the summary counts every dataset");
    assert.ok(out.includes("(2 of 6 shown: --state cached,copying)"), out);
    const globbed = JSON.parse(await statusOutput({ runtimeDir: runtime, json: true }, { measure, now: T0 + 2000 }, ["ima*", "notes.*"])) as StatusReport;
    assert.deepEqual(globbed.datasets.map((d) => d.name), ["imagenet"]);
    assert.deepEqual(globbed.refused.map((r) => r.file), ["/srv/data/notes.sqfs"]);
    const refused = await statusOutput({ runtimeDir: runtime, state: ["refused"] }, { measure, now: T0 + 2000 });
    assert.ok(refused.includes("(2 of 6 shown: --state refused)"), refused);
    await assert.rejects(statusOutput({ runtimeDir: runtime, state: ["hot"] }, { measure, now: T0 + 2000 }), (err: unknown) => err instanceof UsageError && /--state "hot" is not a state; expected cached, copying, queued, slow, refused/.test(err.message));
  });


  test("daemon not running: a one-line UsageError with exit status 1", async () => {
    await assert.rejects(statusOutput({ runtimeDir: path.join(dir, "none") }), (err: unknown) => {
      assert.ok(err instanceof UsageError);
      assert.equal(err.exitCode, 1);
      assert.match(err.message, /^the daemon is not running \(no status file .*status\.json\)$/);
      return true;
    });
  });

  test("runtime dir: the flag wins; a config file without runtime_dir gives the default", async () => {
    const conf = path.join(dir, "plain.conf");
    await writeFile(conf, "datadir = /srv/data\n");
    assert.equal(await resolveRuntimeDir({ runtimeDir: "/tmp/x", config: "/nonexistent.conf" }), "/tmp/x");
    assert.equal(await resolveRuntimeDir({ config: conf }), DEFAULT_RUNTIME_DIR);
  });

  const knowsRuntimeDir = (CONFIG_KEYS as readonly string[]).includes("runtime_dir");
  test("runtime dir: runtime_dir from the config file", { skip: !knowsRuntimeDir && "runtime_dir is not in CONFIG_KEYS yet" }, async () => {
    const conf = path.join(dir, "runtime.conf");
    await writeFile(conf, "runtime_dir = /var/run/sm\n");
    assert.equal(await resolveRuntimeDir({ config: conf }), "/var/run/sm");
  });
});

/** One sample of the exposition text: name{labels} value. */
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A small parser of the Prometheus text format: enough to read back what prom-client writes. */
function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1] as string] = (l[2] as string).replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
    }
    const raw = m[3] as string;
    samples.push({ name: m[1] as string, labels, value: raw === "+Inf" ? Infinity : raw === "-Inf" ? -Infinity : Number(raw) });
  }
  return samples;
}

/** The value of the one sample with this name and these labels (among others), or undefined. */
function valueOf(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  assert.ok(found.length <= 1, `${found.length} samples match ${name} ${JSON.stringify(labels)}`);
  return found[0]?.value;
}

async function samplesOf(metrics: Metrics): Promise<Sample[]> {
  return parseExposition(await metrics.text());
}

const P = "scratch_manager_";

describe("Metrics: the report in the Prometheus text format", () => {
  test("growth: the increase of a cumulative total, never negative", () => {
    const cases: [number | undefined, number, number][] = [
      [undefined, 500, 500],
      [100, 250, 150],
      [250, 250, 0],
      [250, 40, 40],
    ];
    for (const [prev, cur, want] of cases) assert.equal(growth(prev, cur), want, `${prev} -> ${cur}`);
  });

  test("first report: gauges set, counters equal the totals, one tick observed", async () => {
    const metrics = new Metrics();
    metrics.update(makeReport());
    const s = await samplesOf(metrics);
    assert.equal(valueOf(s, `${P}dataset_read_bytes_total`, { dataset: "imagenet", tier: "slow" }), 40 * GiB);
    assert.equal(valueOf(s, `${P}dataset_read_bytes_total`, { dataset: "imagenet", tier: "cache" }), 0);
    assert.equal(valueOf(s, `${P}dataset_read_bytes_total`, { dataset: "coco", tier: "cache" }), 3 * TiB);
    assert.equal(valueOf(s, `${P}dataset_size_bytes`, { dataset: "laion" }), 300 * GiB);
    assert.equal(valueOf(s, `${P}dataset_read_rate_bytes_per_second`, { dataset: "coco", tier: "cache" }), 310 * MiB);
    assert.equal(valueOf(s, `${P}dataset_state`, { dataset: "imagenet", state: "copying" }), 1);
    assert.equal(valueOf(s, `${P}dataset_state`, { dataset: "imagenet", state: "cached" }), 0);
    assert.equal(
      s.filter((x) => x.name === `${P}dataset_state` && x.labels.dataset === "coco").reduce((sum, x) => sum + x.value, 0),
      1,
      "exactly one state is 1",
    );
    assert.equal(valueOf(s, `${P}dataset_pinned`, { dataset: "coco" }), 1);
    assert.equal(valueOf(s, `${P}dataset_pinned`, { dataset: "laion" }), 0);
    assert.equal(valueOf(s, `${P}cache_used_bytes`), 12 * GiB);
    assert.equal(valueOf(s, `${P}cache_capacity_bytes`), 500 * GiB);
    assert.equal(valueOf(s, `${P}cache_ghost_bytes`), 0);
    assert.equal(valueOf(s, `${P}cache_fs_free_bytes`), 1.2 * TiB);
    assert.equal(valueOf(s, `${P}refused_images`), 2);
    assert.equal(valueOf(s, `${P}copies_started_total`), 2);
    assert.equal(valueOf(s, `${P}copies_finished_total`), 1);
    assert.equal(valueOf(s, `${P}copy_bytes_total`), 12 * GiB);
    assert.equal(valueOf(s, `${P}cache_bytes_served_total`), 3 * TiB);
    assert.equal(valueOf(s, `${P}tick_duration_seconds_count`), 1);
    assert.equal(valueOf(s, `${P}tick_duration_seconds_sum`), 0.042);
    assert.equal(valueOf(s, `${P}tick_duration_seconds_bucket`, { le: "0.05" }), 1);
    assert.equal(valueOf(s, `${P}tick_duration_seconds_bucket`, { le: "0.025" }), 0);
    assert.equal(valueOf(s, `${P}status_timestamp_seconds`), T0 / 1000);
    assert.equal(valueOf(s, "process_cpu_seconds_total"), undefined, "no process metrics unless asked");
  });

  test("later reports: counters grow by the deltas; a vanished dataset loses its series; a reset total counts whole", async () => {
    const metrics = new Metrics();
    const first = makeReport();
    metrics.update(first);
    // Same tick written twice (not observed twice), coco's total grew, imagenet is gone, laion's total went down.
    const second = makeReport({
      datasets: [
        ds("coco", { cacheBytesRead: 3 * TiB + 5 * GiB, slowBytesRead: 5 * GiB, state: "cached" }),
        ds("laion", { slowBytesRead: 0 }),
        ds("places", { slowBytesRead: 7 * MiB }),
      ],
      copies: { started: 3, finished: 2, failed: 1, cancelled: 0, bytes: 20 * GiB },
      cacheBytesServed: 3 * TiB + 5 * GiB,
      refused: [],
    });
    metrics.update(second);
    let s = await samplesOf(metrics);
    assert.equal(valueOf(s, `${P}dataset_read_bytes_total`, { dataset: "coco", tier: "cache" }), 3 * TiB + 5 * GiB);
    assert.equal(valueOf(s, `${P}dataset_read_bytes_total`, { dataset: "coco", tier: "slow" }), 5 * GiB);
    assert.equal(valueOf(s, `${P}dataset_read_bytes_total`, { dataset: "places", tier: "slow" }), 7 * MiB);
    for (const name of ["dataset_read_bytes_total", "dataset_size_bytes", "dataset_state", "dataset_pinned", "dataset_read_rate_bytes_per_second"]) {
      assert.equal(s.filter((x) => x.name === P + name && x.labels.dataset === "imagenet").length, 0, `${name} of imagenet removed`);
    }
    assert.equal(valueOf(s, `${P}copies_started_total`), 3);
    assert.equal(valueOf(s, `${P}copies_failed_total`), 1);
    assert.equal(valueOf(s, `${P}copy_bytes_total`), 20 * GiB);
    assert.equal(valueOf(s, `${P}cache_bytes_served_total`), 3 * TiB + 5 * GiB);
    assert.equal(valueOf(s, `${P}refused_images`), 0);
    assert.equal(valueOf(s, `${P}tick_duration_seconds_count`), 1, "the same tick count is observed once");

    // laion read 2 MiB after its total went to 0: counted from 0, so the counter never goes down.
    metrics.update(
      makeReport({
        datasets: [ds("imagenet", { slowBytesRead: 3 * MiB }), ds("laion", { slowBytesRead: 2 * MiB })],
        tick: { count: 101, ms: 2500 },
      }),
    );
    s = await samplesOf(metrics);
    assert.equal(valueOf(s, `${P}dataset_read_bytes_total`, { dataset: "imagenet", tier: "slow" }), 3 * MiB, "a dataset that comes back restarts from its total");
    assert.equal(valueOf(s, `${P}dataset_read_bytes_total`, { dataset: "laion", tier: "slow" }), 2 * MiB);
    assert.equal(valueOf(s, `${P}copies_started_total`), 5, "started went from 3 down to 2 (a restart): the 2 count whole");
    assert.equal(valueOf(s, `${P}tick_duration_seconds_count`), 2);
    assert.equal(valueOf(s, `${P}tick_duration_seconds_sum`), 2.542);
  });

  test("label values with quotes and backslashes survive", async () => {
    const metrics = new Metrics();
    metrics.update(makeReport({ datasets: [ds('we"ird\\name', { sizeBytes: 5 })] }));
    assert.equal(valueOf(await samplesOf(metrics), `${P}dataset_size_bytes`, { dataset: 'we"ird\\name' }), 5);
  });

  test("process metrics on request, under the scratch_manager_ prefix", async () => {
    const metrics = new Metrics({ processMetrics: true });
    const s = await samplesOf(metrics);
    assert.ok((valueOf(s, `${P}process_cpu_seconds_total`) ?? -1) >= 0);
    assert.equal(valueOf(s, "process_cpu_seconds_total"), undefined);
  });

  test("writeFile: atomically, mode 0644, the same text; no temporary file left", async () => {
    const { dir, cleanup } = await tempDir("sm-metrics-");
    try {
      const metrics = new Metrics();
      metrics.update(makeReport());
      const file = path.join(dir, "scratch_manager.prom");
      const old = process.umask(0o077);
      try {
        await metrics.writeFile(file);
        await metrics.writeFile(file);
      } finally {
        process.umask(old);
      }
      assert.equal((await stat(file)).mode & 0o777, 0o644);
      assert.equal(await readFile(file, "utf8"), await metrics.text());
      assert.deepEqual(await readdir(dir), ["scratch_manager.prom"]);
    } finally {
      await cleanup();
    }
  });

  test("parseHostPort", () => {
    assert.deepEqual(parseHostPort("127.0.0.1:9456"), { host: "127.0.0.1", port: 9456 });
    assert.deepEqual(parseHostPort("[::1]:9456"), { host: "::1", port: 9456 });
    assert.deepEqual(parseHostPort(":9456"), { host: "", port: 9456 });
    for (const bad of ["9456", "localhost:", "localhost:99999", "::1:9456", "a:b"]) {
      assert.throws(() => parseHostPort(bad), (err: unknown) => err instanceof UsageError && err.message.includes("metrics_listen"), bad);
    }
  });

  test("HTTP: GET /metrics with the exposition content type, 404 elsewhere, 405 for POST", async () => {
    const metrics = new Metrics();
    metrics.update(makeReport());
    const server = await metrics.listen("127.0.0.1:0");
    try {
      assert.ok(server.port > 0);
      const base = `http://127.0.0.1:${server.port}`;
      const res = await fetch(`${base}/metrics`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
      const s = parseExposition(await res.text());
      assert.equal(valueOf(s, `${P}cache_used_bytes`), 12 * GiB);

      metrics.update(makeReport({ cache: { ...makeReport().cache, usedBytes: 13 * GiB } }));
      const again = parseExposition(await (await fetch(`${base}/metrics?x=1`)).text());
      assert.equal(valueOf(again, `${P}cache_used_bytes`), 13 * GiB, "each scrape reads the current values");

      const missing = await fetch(`${base}/`);
      assert.equal(missing.status, 404);
      await missing.body?.cancel();
      const post = await fetch(`${base}/metrics`, { method: "POST" });
      assert.equal(post.status, 405);
      await post.body?.cancel();
    } finally {
      await server.close();
    }
    await assert.rejects(fetch(`http://127.0.0.1:${server.port}/metrics`), "closed");
  });

  test("HTTP: a port in use is an error from listen", async () => {
    const metrics = new Metrics();
    const server = await metrics.listen("127.0.0.1:0");
    try {
      await assert.rejects(new Metrics().listen(`127.0.0.1:${server.port}`), /EADDRINUSE/);
    } finally {
      await server.close();
    }
  });

  test("datadir_up, cachedir_up, the last good scans and the reason of each directory's condition", async () => {
    const metrics = new Metrics();
    metrics.update(makeReport({ storage: troubledStorage() }));
    const s = await samplesOf(metrics);
    assert.equal(valueOf(s, `${P}datadir_up`, {}), 0);
    assert.equal(valueOf(s, `${P}cachedir_up`, {}), 1);
    assert.equal(valueOf(s, `${P}datadir_last_scan_timestamp_seconds`, {}), (T0 - 100_000) / 1000);
    assert.equal(valueOf(s, `${P}directory_condition`, { dir: "datadir", reason: "NotResponding" }), 1);
    assert.equal(valueOf(s, `${P}directory_condition`, { dir: "datadir", reason: "Available" }), 0);
    assert.equal(valueOf(s, `${P}directory_condition`, { dir: "cachedir", reason: "Available" }), 1);
  });

  // promtool is not in the base image; see .ci/setup. Found through $PROMTOOL or the PATH.
  const promtool = findPromtool();
  test("promtool check metrics accepts the text", { skip: promtool === undefined && "promtool not found (set PROMTOOL or put it on the PATH)" }, async () => {
    // Without processMetrics: prom-client names some of its own gauges *_total
    // (nodejs_active_handles_total), which promtool's lint rejects.
    const metrics = new Metrics();
    metrics.update(makeReport());
    metrics.update(makeReport({ tick: { count: 101, ms: 3 }, storage: troubledStorage() }));
    const out = execFileSync(promtool as string, ["check", "metrics"], { input: await metrics.text(), encoding: "utf8", timeout: 30_000 });
    assert.equal(out.trim(), "");
  });
});

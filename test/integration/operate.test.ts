/** Issue 4: pinning, eviction, status, metrics, systemd notify, reload, copy limits. Real mounts. */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { CLI, Daemon, makeImage, makeSmallFs, mountsUnder, stackAt, startReader, waitUntil, withRoot, type TestRoot } from "./harness.js";

const MB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const cli = (args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8", timeout: 10_000 });
const dirs = (root: TestRoot) => ({ state_dir: path.join(root.root, "state"), runtime_dir: path.join(root.root, "run") });

test("pins: from the config and from `scratch_manager pin`, cached without reads and never evicted; --for expires; bad pins reported", async () => {
  await withRoot("pins", async (root, track) => {
    for (const name of ["a", "b", "c", "hot"]) makeImage(root, path.join(root.data, `${name}.sqfs`), { "data.bin": 4 * MB });
    const d = track(Daemon.start(root, { capacity: "13MB", pin: "a, ghost", ...dirs(root) }));
    await waitUntil("a cached by its config pin", () => stackAt(path.join(root.mnt, "a")).length === 2);
    const pinned = cli(["pin", "b", "--state-dir", dirs(root).state_dir]);
    assert.equal(pinned.status, 0, pinned.stderr);
    assert.match(pinned.stdout, /^pinned b\tadmin\tuntil unpinned/);
    await waitUntil("b cached by its run-time pin", () => stackAt(path.join(root.mnt, "b")).length === 2);
    assert.equal((readFileSync(path.join(dirs(root).state_dir, "pins.json")).length > 0 && execFileSync("stat", ["-c", "%a", path.join(dirs(root).state_dir, "pins.json")], { encoding: "utf8" }).trim()), "644");
    await d.waitForLog("unknown pin reported", (l) => l.msg === 'pinned dataset "ghost" does not exist');
    // A hot dataset gets the room left (13 - 8 = 5 MiB), never a pinned one's.
    startReader(path.join(root.mnt, "hot"));
    await waitUntil("hot cached beside the pins", () => stackAt(path.join(root.mnt, "hot")).length === 2);
    // c pinned for 4 s by a job: it does not fit beside a, b and hot... pins come first, hot is dropped.
    assert.equal(cli(["pin", "c", "--for", "4s", "--owner", "job42", "--state-dir", dirs(root).state_dir]).status, 0);
    await waitUntil("c cached, hot dropped", () => stackAt(path.join(root.mnt, "c")).length === 2 && stackAt(path.join(root.mnt, "hot")).length === 1);
    // The pin expires: hot, still read, takes the room back.
    await waitUntil("c's pin expired and hot back", () => stackAt(path.join(root.mnt, "c")).length === 1 && stackAt(path.join(root.mnt, "hot")).length === 2, 20_000);
    assert.equal(stackAt(path.join(root.mnt, "a")).length, 2, "a never evicted");
    assert.equal(stackAt(path.join(root.mnt, "b")).length, 2, "b never evicted");
    // More pins than room: reported, naming what does not fit.
    assert.equal(cli(["pin", "c", "hot", "--state-dir", dirs(root).state_dir]).status, 0);
    const over = await d.waitForLog("pins exceed", (l) => l.msg.startsWith("pins exceed the cache"));
    assert.match(over.msg, /(c|hot) \(4\.00 MiB\).* not cached; pinned datasets need 16\.0 MiB/);
    const unpinned = cli(["unpin", "b", "c", "hot", "--state-dir", dirs(root).state_dir]);
    assert.equal(unpinned.status, 0);
    assert.match(unpinned.stdout, /unpinned b\tadmin/);
  });
});

test("max_idle evicts a cached dataset nobody reads; keep_free leaves room on the cache file system for other programs", async () => {
  await withRoot("idle", async (root, track) => {
    makeImage(root, path.join(root.data, "once.sqfs"), { "data.bin": 2 * MB });
    const d = track(Daemon.start(root, { capacity: "64MB", max_idle: 2, ...dirs(root) }));
    const reader = startReader(path.join(root.mnt, "once"));
    await waitUntil("cached", () => stackAt(path.join(root.mnt, "once")).length === 2);
    await reader.stop();
    await waitUntil("evicted once idle", () => stackAt(path.join(root.mnt, "once")).length === 1, 20_000);
    await d.waitForLog("once unmounted", (l) => l.msg === "unmounted" && l.dataset === "once", 5000);
    assert.ok(!existsSync(path.join(root.cache, "once.sqfs")));
  });
  await withRoot("keepfree", async (root, track) => {
    const cachefs = makeSmallFs(root, "cachefs", 40);
    const cachedir = path.join(cachefs, "cache");
    mkdirSync(cachedir);
    makeImage(root, path.join(root.data, "small.sqfs"), { "data.bin": 6 * MB });
    makeImage(root, path.join(root.data, "large.sqfs"), { "data.bin": 20 * MB });
    track(Daemon.start(root, { capacity: "100MB", keep_free: "20MB", cachedir, ...dirs(root) }));
    startReader(path.join(root.mnt, "small"));
    startReader(path.join(root.mnt, "large"));
    await waitUntil("small cached", () => stackAt(path.join(root.mnt, "small")).length === 2);
    await sleep(1500);
    assert.equal(stackAt(path.join(root.mnt, "large")).length, 1, "large would push free space below keep_free");
    // Another program takes space: the cache gives its share back.
    execFileSync("fallocate", ["-l", "12M", path.join(cachefs, "theirs")]);
    // The copy is deleted right after its mount comes off (the same tick): waited for, not raced.
    await waitUntil("small evicted for keep_free", () => stackAt(path.join(root.mnt, "small")).length === 1, 20_000);
    await waitUntil("its copy deleted", () => readdirSync(cachedir).length === 0, 5000);
  });
});

test("status: a table and --json for any user, from the file the daemon rewrites each tick; exit 1 when the daemon is gone", async () => {
  await withRoot("status", async (root, track) => {
    makeImage(root, path.join(root.data, "coco.sqfs"), { "data.bin": 4 * MB });
    writeFileSync(path.join(root.data, "junk.sqfs"), "junk");
    const d = track(Daemon.start(root, { capacity: "64MB", pin: "coco", ...dirs(root) }));
    await waitUntil("coco cached", () => stackAt(path.join(root.mnt, "coco")).length === 2);
    await sleep(800);
    const runtimeDir = dirs(root).runtime_dir;
    chmodSync(root.root, 0o755); // mkdtemp's 0700 would keep nobody out of the whole test root
    assert.equal(execFileSync("stat", ["-c", "%a", path.join(runtimeDir, "status.json")], { encoding: "utf8" }).trim(), "644");
    // As nobody: the status is readable by any user.
    const table = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", process.execPath, CLI, "status", "--runtime-dir", runtimeDir], { encoding: "utf8" });
    assert.equal(table.status, 0, table.stderr);
    assert.match(table.stdout, /coco/);
    assert.match(table.stdout, /cached/);
    assert.match(table.stdout, /pinned/);
    assert.match(table.stdout, /junk\.sqfs/);
    assert.match(table.stdout, /refused/);
    const json = cli(["status", "--json", "--runtime-dir", runtimeDir]);
    assert.equal(json.status, 0, json.stderr);
    const report = JSON.parse(json.stdout) as { datasets: { name: string; state: string; pinned: boolean; sizeBytes: number }[]; refused: { file: string }[]; cache: { capacityBytes: number } };
    assert.deepEqual(report.datasets.map((x) => [x.name, x.state, x.pinned]), [["coco", "cached", true]]);
    assert.equal(report.cache.capacityBytes, 64 * MB);
    assert.deepEqual(report.refused.map((r) => r.file), ["junk.sqfs"]);
    await d.stop();
    const gone = cli(["status", "--runtime-dir", runtimeDir]);
    assert.equal(gone.status, 1);
    assert.match(gone.stderr, /not running/);
  });
});

test("metrics: Prometheus text over HTTP and in a file for node_exporter, per dataset and tier", async () => {
  await withRoot("metrics", async (root, track) => {
    makeImage(root, path.join(root.data, "coco.sqfs"), { "data.bin": 4 * MB });
    const metricsFile = path.join(root.root, "textfile", "scratch_manager.prom");
    mkdirSync(path.dirname(metricsFile));
    const d = track(Daemon.start(root, { capacity: "64MB", metrics_listen: "127.0.0.1:0", metrics_file: metricsFile, ...dirs(root) }));
    const serving = await d.waitForLog("serving metrics", (l) => l.msg === "serving metrics");
    const reader = startReader(path.join(root.mnt, "coco"));
    await waitUntil("cached", () => stackAt(path.join(root.mnt, "coco")).length === 2);
    await sleep(1500);
    await reader.stop();
    const res = await fetch(`http://127.0.0.1:${String(serving.port)}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /text\/plain/);
    const text = await res.text();
    const value = (re: RegExp) => Number(re.exec(text)?.[1]);
    assert.ok(value(/^scratch_manager_dataset_read_bytes_total\{[^}]*dataset="coco"[^}]*tier="slow"[^}]*\} (\S+)$/m) > 0, "slow-tier bytes of coco");
    assert.ok(value(/^scratch_manager_dataset_read_bytes_total\{[^}]*dataset="coco"[^}]*tier="cache"[^}]*\} (\S+)$/m) > 0, "cache-tier bytes of coco");
    assert.equal(value(/^scratch_manager_cache_capacity_bytes (\S+)$/m), 64 * MB);
    assert.equal(value(/^scratch_manager_copies_finished_total (\S+)$/m), 1);
    assert.ok(value(/^scratch_manager_tick_duration_seconds_count (\S+)$/m) > 0);
    await waitUntil("metrics file", () => existsSync(metricsFile) && readFileSync(metricsFile, "utf8").includes("scratch_manager_cache_used_bytes"));
    assert.equal((await fetch(`http://127.0.0.1:${String(serving.port)}/nope`)).status, 404);
    assert.equal((await d.stop()).code, 0, "SIGTERM with a listener open still exits 0");
  });
});

test("systemd notify: READY=1 after the first tick, STATUS= a summary and WATCHDOG=1 when it changes and every half watchdog period, through systemd-notify", async () => {
  await withRoot("notify", async (root, track) => {
    makeImage(root, path.join(root.data, "coco.sqfs"), { "data.bin": MB });
    const sent = path.join(root.root, "notify.log");
    const d = new Daemon(root, {
      // interval 2: the first tick waits up to an interval for the first scan (four child processes), which a loaded machine may not finish in 0.3 s.
      config: Daemon.standardConfig(root, { ...dirs(root), interval: 2 }),
      bin: { "systemd-notify": `echo "$NOTIFY_SOCKET $*" >> ${sent}` },
      // As systemd sets it with WatchdogSec=1: the message is repeated every 0.5 s even when unchanged.
      env: { NOTIFY_SOCKET: "/run/systemd/notify-test", WATCHDOG_USEC: "1000000" },
    });
    track(d);
    await waitUntil("notifications", () => existsSync(sent) && readFileSync(sent, "utf8").split("\n").length > 3);
    const lines = readFileSync(sent, "utf8").trim().split("\n");
    assert.match(lines[0] ?? "", new RegExp(`^/run/systemd/notify-test --pid=${String(d.child.pid)} READY=1 STATUS=1 datasets, 0 cached, 0 copying, 0% of 200 MiB WATCHDOG=1$`));
    assert.ok(mountsUnder(root.mnt).length === 1, "the first tick mounted before READY");
    await d.stop();
    assert.match(readFileSync(sent, "utf8").trim().split("\n").at(-1) ?? "", /--pid=\d+ STOPPING=1 STATUS=stopping: /, "STOPPING=1 on SIGTERM");
    const quiet = new Daemon(root, { config: Daemon.standardConfig(root, dirs(root)), bin: { "systemd-notify": `echo called >> ${sent}.quiet` } });
    track(quiet);
    await sleep(1000);
    assert.ok(!existsSync(`${sent}.quiet`), "no NOTIFY_SOCKET: nothing sent");
  });
});

test("SIGHUP reloads: a new capacity applies without touching mounts that stay right; an invalid file is rejected and the old one kept", async () => {
  await withRoot("reload", async (root, track) => {
    makeImage(root, path.join(root.data, "a.sqfs"), { "data.bin": 4 * MB });
    makeImage(root, path.join(root.data, "b.sqfs"), { "data.bin": 4 * MB });
    const d = track(Daemon.start(root, { capacity: "64MB", ...dirs(root) }));
    startReader(path.join(root.mnt, "a"));
    startReader(path.join(root.mnt, "b"));
    await waitUntil("both cached", () => stackAt(path.join(root.mnt, "a")).length === 2 && stackAt(path.join(root.mnt, "b")).length === 2);
    const slowIds = ["a", "b"].map((n) => stackAt(path.join(root.mnt, n))[0]?.id);
    const conf = path.join(root.root, "scratch_manager.conf");
    writeFileSync(conf, Daemon.standardConfig(root, { capacity: "nonsense", ...dirs(root) }));
    d.signal("SIGHUP");
    const rejected = await d.waitForLog("rejected", (l) => l.msg === "configuration reload rejected; keeping the current one");
    assert.match(String(rejected.err), /capacity = "nonsense" is not valid/);
    await sleep(600);
    assert.equal(d.child.exitCode, null, "still running");
    writeFileSync(conf, Daemon.standardConfig(root, { capacity: "6MB", max_copies: 1, ...dirs(root) }));
    d.signal("SIGHUP");
    await d.waitForLog("reloaded", (l) => l.msg === "configuration reloaded");
    await waitUntil("one dropped", () => stackAt(path.join(root.mnt, "a")).length + stackAt(path.join(root.mnt, "b")).length === 3);
    assert.deepEqual(["a", "b"].map((n) => stackAt(path.join(root.mnt, n))[0]?.id), slowIds, "slow mounts untouched");
  });
});

test("max_copies bounds concurrent copies and copy_bwlimit throttles each", async () => {
  await withRoot("limits", async (root, track) => {
    for (const name of ["x", "y", "z"]) makeImage(root, path.join(root.data, `${name}.sqfs`), { "data.bin": 3 * MB });
    const d = track(Daemon.start(root, { capacity: "64MB", max_copies: 1, copy_bwlimit: "1MB", ...dirs(root) }));
    for (const name of ["x", "y", "z"]) startReader(path.join(root.mnt, name));
    let most = 0;
    await waitUntil("all cached", () => {
      most = Math.max(most, readdirSync(root.cache).filter((f) => f.endsWith(".partial")).length);
      return ["x", "y", "z"].every((n) => stackAt(path.join(root.mnt, n)).length === 2);
    }, 40_000, 50);
    assert.equal(most, 1, "one copy at a time");
    const finished = await waitUntil("three copies logged", () => {
      const lines = d.logs.filter((l) => l.msg === "copy finished");
      return lines.length === 3 && lines;
    }, 5000);
    for (const f of finished) assert.ok((f.mbps as number) <= 1.3, `copy at ${String(f.mbps)} MB/s within the 1 MB/s limit`);
  });
});

// The Slurm prolog and epilog run under a real Slurm in test/slurm/slurm.test.ts.

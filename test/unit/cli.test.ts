/** The command line as the original's users know it: its flags in --help, `scratch_manager -c FILE -v`. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, fstatSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { tempDir } from "./helpers.js";

const CLI = fileURLToPath(new URL("../../src/cli.js", import.meta.url));
const cli = (args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8", timeout: 10_000, env: { ...process.env, COLUMNS: "100" } });

const DAEMON_FLAGS = ["-c, --config <file>", "--datadir <dir>", "--cachedir <dir>", "--mountdir <dir>", "--capacity <size>", "--period <seconds>", "--interval <seconds>", "--naming <rule>", "-v, --verbose"];

test("--help shows the daemon's flags next to the commands, as the original's help did", () => {
  const help = cli(["--help"]);
  assert.equal(help.status, 0, help.stderr);
  const options = help.stdout.slice(help.stdout.indexOf("Options:"), help.stdout.indexOf("Commands:"));
  for (const flag of DAEMON_FLAGS) assert.ok(options.includes(flag), `--help lists ${flag} among its options`);
  const commands = help.stdout.slice(help.stdout.indexOf("Commands:"));
  for (const command of ["run", "status", "check", "config", "pin", "unpin", "evict", "release", "help"]) assert.match(commands, new RegExp(`^  ${command} `, "m"));
  // `run --help` has the same flags: `scratch_manager run -c FILE` is the same daemon.
  const run = cli(["run", "--help"]);
  for (const flag of DAEMON_FLAGS) assert.ok(run.stdout.includes(flag), `run --help lists ${flag}`);
});

test("scratch_manager -c FILE -v and scratch_manager run -c FILE -v both reach the daemon's configuration", async () => {
  const { dir, cleanup } = await tempDir();
  const conf = path.join(dir, "scratch_manager.conf");
  // Invalid on purpose: the daemon stops at its configuration, before touching anything.
  await writeFile(conf, `datadir = ${dir}\ncachedir = ${dir}\nmountdir = ${dir}\ncapacity = 12XB\n`);
  for (const args of [["-c", conf, "-v"], ["--config", conf, "--verbose"], ["run", "-c", conf, "-v"]]) {
    const r = cli(args);
    assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.ok(r.stderr.startsWith(`scratch_manager: config: ${conf}:4: capacity = "12XB" is not valid; expected `), `${args.join(" ")}: ${r.stderr}`);
  }
  // A flag overrides the file, at the top level as under run.
  const r = cli(["-c", conf, "--capacity", "1XB"]);
  assert.match(r.stderr, /capacity = "1XB" is not valid/);
  await cleanup();
});

test("a mistyped command is one line and exit status 2; help COMMAND works", () => {
  const r = cli(["stauts"]);
  assert.equal(r.status, 2);
  assert.equal(r.stderr, 'scratch_manager: unknown command "stauts"; did you mean status?\n');
  assert.equal(cli(["frobnicate"]).stderr, 'scratch_manager: unknown command "frobnicate"; see scratch_manager --help\n');
  const help = cli(["help", "status"]);
  assert.equal(help.status, 0);
  assert.match(help.stdout, /^Usage: scratch_manager status /);
  // A command's own options come after its name: status -c is status's, not the daemon's.
  const status = cli(["status", "-c", "/nonexistent/scratch_manager.conf"]);
  assert.equal(status.status, 2);
  assert.match(status.stderr, /cannot read \/nonexistent\/scratch_manager\.conf/);
});

test("under systemd, an error that stops the program has priority err (<3>), so that journalctl -p err finds it", async () => {
  const { dir, cleanup } = await tempDir();
  const file = path.join(dir, "stderr");
  const fd = openSync(file, "w");
  try {
    const st = fstatSync(fd, { bigint: true });
    // stderr is the journal's stream: systemd says so with JOURNAL_STREAM=device:inode.
    const r = spawnSync(process.execPath, [CLI, "-c", path.join(dir, "missing.conf")], { stdio: ["ignore", "ignore", fd], env: { ...process.env, JOURNAL_STREAM: `${st.dev}:${st.ino}` } });
    assert.equal(r.status, 2);
    assert.match(readFileSync(file, "utf8"), /^<3>scratch_manager: config: cannot read .*missing\.conf/);
  } finally {
    closeSync(fd);
    await cleanup();
  }
  // Not the journal's stream: no prefix.
  assert.match(cli(["-c", "/nonexistent.conf"]).stderr, /^scratch_manager: config: /);
});

/** Runs the CLI with a configuration file of `text` in a fresh directory. */
async function withConf(text: (dir: string) => string, body: (conf: string, dir: string) => void): Promise<void> {
  const { dir, cleanup } = await tempDir();
  try {
    const conf = path.join(dir, "scratch_manager.conf");
    await writeFile(conf, text(dir));
    body(conf, dir);
  } finally {
    await cleanup();
  }
}

test("a configuration line that is not key = value is named with its file and line, and what to write", async () => {
  await withConf(
    (dir) => `; a comment\ndatadir ${dir}\n`,
    (conf, dir) => {
      const r = cli(["-c", conf]);
      assert.equal(r.status, 2);
      assert.equal(r.stderr, `scratch_manager: config: ${conf}:2: "datadir ${dir}" is not "key = value"; write "datadir = ${dir}"\n`);
    },
  );
});

test("a misspelled key: its line, and the key it most likely meant", async () => {
  await withConf(
    (dir) => `datadir = ${dir}\ncachdir = ${dir}\n`,
    (conf) => {
      const r = cli(["-c", conf]);
      assert.equal(r.status, 2);
      assert.equal(r.stderr, `scratch_manager: config: ${conf}:2: unknown key "cachdir"; did you mean cachedir?\n`);
      assert.ok(!r.stderr.includes("peer_dir_owner"), "not the list of every key");
    },
  );
});

test("an unknown option: commander's message with the program's prefix, and its suggestion", () => {
  const r = cli(["--verbsoe"]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /^scratch_manager: unknown option '--verbsoe'\n\(Did you mean --verbose\?\)\n$/);
  const sub = cli(["status", "--jsno"]);
  assert.match(sub.stderr, /^scratch_manager: unknown option '--jsno'/);
});

test("status --json with no daemon: a JSON object naming the error on stdout (for pdsh ... | jq), exit status 1", async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const r = cli(["status", "--json", "--runtime-dir", dir]);
    assert.equal(r.status, 1);
    const parsed = JSON.parse(r.stdout) as { error?: string };
    assert.match(parsed.error ?? "", /^the daemon is not running \(no status file /);
    assert.match(r.stderr, /^scratch_manager: the daemon is not running/);
  } finally {
    await cleanup();
  }
});

test("pin --for needs a unit: a bare number is refused, not taken as seconds", async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const r = cli(["pin", "coco", "--for", "4", "--force", "--state-dir", dir]);
    assert.equal(r.status, 2);
    assert.equal(r.stderr, 'scratch_manager: pin: --for "4" is not valid; expected a number followed by s, m, h or d, e.g. 30m, 2h or 7d\n');
    assert.equal(cli(["pin", "coco", "--for", "4h", "--force", "--state-dir", dir]).status, 0);
  } finally {
    await cleanup();
  }
});

test("pin of a dataset the running daemon does not know: refused with the closest name, nothing pinned; --force pins it", async () => {
  await withConf(
    (dir) => `runtime_dir = ${dir}\nstate_dir = ${dir}\n`,
    (conf, dir) => {
      const report = { version: 1, pid: process.pid, writtenAt: Date.now(), intervalSeconds: 5, periodSeconds: 1200, cacheBytesServed: 0, datasets: [{ name: "coco" }, { name: "imagenet" }], refused: [], problems: [], cache: {}, copies: {}, tick: {} };
      writeFileSync(path.join(dir, "status.json"), JSON.stringify(report));
      const r = cli(["pin", "cocoo", "-c", conf]);
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, /^scratch_manager: pin: no dataset "cocoo" \(did you mean coco\?\); nothing pinned\. --force /);
      assert.equal(cli(["pin", "-c", conf]).stdout, "", "nothing pinned");
      assert.equal(cli(["pin", "coco", "-c", conf]).status, 0);
      assert.equal(cli(["pin", "cocoo", "--force", "-c", conf]).status, 0);
      assert.deepEqual(cli(["pin", "-c", conf]).stdout.split("\n").filter(Boolean).map((l) => l.split("\t")[0]).sort(), ["coco", "cocoo"]);
    },
  );
});

test("unpin of a pin held by another owner says who holds it and how to remove it", async () => {
  const { dir, cleanup } = await tempDir();
  try {
    assert.equal(cli(["pin", "coco", "--owner", "slurm-4711", "--force", "--state-dir", dir]).status, 0);
    const r = cli(["unpin", "coco", "--state-dir", dir]);
    assert.equal(r.stderr, "scratch_manager: no pin of coco by admin; it is pinned by slurm-4711: unpin coco --owner slurm-4711, or --all for every owner\n");
  } finally {
    await cleanup();
  }
});

test("pin as a user who may not write the pins: one line that says to run it as root, no stack", { skip: process.getuid?.() !== 0 ? "needs root, to become another user" : false }, async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const r = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", process.execPath, CLI, "pin", "coco", "--force", "--state-dir", dir], { encoding: "utf8", timeout: 10_000 });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /^scratch_manager: cannot change the pins in .* \(EACCES\); pins are root's: run it as root/);
    assert.equal(r.stderr.split("\n").filter(Boolean).length, 1, r.stderr);
    assert.ok(!r.stderr.includes("node:internal"), r.stderr);
  } finally {
    await cleanup();
  }
});

test("pin lists its end in local time, as status shows times (TZ=Pacific/Chatham: UTC+12:45 or +13:45)", async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const env = { ...process.env, TZ: "Pacific/Chatham" };
    const run = (args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8", timeout: 10_000, env });
    const before = Date.now();
    assert.equal(run(["pin", "coco", "--for", "2h", "--force", "--state-dir", dir]).status, 0);
    const listed = run(["pin", "--state-dir", dir]).stdout;
    const shown = /^coco\tadmin\tuntil (?:\d{4}-\d\d-\d\d )?(\d\d:\d\d)$/m.exec(listed)?.[1];
    // The end as a clock in that zone, for the minute of the pin and the next (the command ran in between).
    const clock = (at: number) => new Intl.DateTimeFormat("en-GB", { timeZone: "Pacific/Chatham", hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).format(at);
    const end = before + 2 * 3600_000;
    assert.ok(shown !== undefined && [clock(end), clock(end + 60_000)].includes(shown), `${listed} (expected ${clock(end)})`);
  } finally {
    await cleanup();
  }
});

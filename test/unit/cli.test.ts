/** The command line as the original's users know it: its flags in --help, `scratch_manager -c FILE -v`. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, fstatSync, openSync, readFileSync } from "node:fs";
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
  for (const command of ["run", "status", "pin", "unpin", "help"]) assert.match(commands, new RegExp(`^  ${command} `, "m"));
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
    assert.match(r.stderr, /^scratch_manager: config: capacity = "12XB" is not valid; expected /, args.join(" "));
  }
  // A flag overrides the file, at the top level as under run.
  const r = cli(["-c", conf, "--capacity", "1XB"]);
  assert.match(r.stderr, /capacity = "1XB" is not valid/);
  await cleanup();
});

test("a mistyped command is one line and exit status 2; help COMMAND works", () => {
  const r = cli(["stauts"]);
  assert.equal(r.status, 2);
  assert.equal(r.stderr, 'scratch_manager: unknown command "stauts"; see scratch_manager --help\n');
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
